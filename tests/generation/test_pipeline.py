"""The generation pipeline without HTTP: plans in, reply events out, every refusal before the first event."""

from __future__ import annotations

import asyncio
import json

import pytest

from server.errors import ContextLengthExceededError, InvalidRequestError
from server.generation.pipeline import GenerationPipeline
from server.generation.plan import FunctionSpec, GenerationPlan, ParamNames, Sampling, ToolRequest, Turn
from server.generation.reply import ChoiceEnd, TextPiece, ToolCallArguments, ToolCallStart, finished
from server.metrics import RequestRecord
from server.models.registry import ModelRegistry
from tests.conftest import FakeLoader
from tests.fakes import FakeScript, fake_spec

HELLO = (Turn("user", "Hi"),)
WEATHER = FunctionSpec("get_weather", "Weather", {"type": "object", "properties": {"city": {"type": "string"}}})


def run(coroutine):
    return asyncio.run(coroutine)


def record() -> RequestRecord:
    return RequestRecord(request_id="t", method="POST", path="/")


@pytest.fixture
def loader() -> FakeLoader:
    return FakeLoader()


@pytest.fixture
def pipeline(loader) -> GenerationPipeline:
    return GenerationPipeline(ModelRegistry([fake_spec("m", n_ctx=4096), fake_spec("e")], loader))


def collect(pipeline: GenerationPipeline, plan: GenerationPlan):
    async def go():
        generation = await pipeline.start(plan, record())
        events = []
        async for event in generation.events:
            events.append(event)
        return generation, events

    return run(go())


def test_a_conversation_becomes_text_pieces_and_an_end(pipeline, loader):
    generation, events = collect(pipeline, GenerationPlan(model="m", turns=HELLO))
    assert "".join(e.text for e in events if isinstance(e, TextPiece)) == "Hello, world!"
    assert events[-1] == ChoiceEnd(0, "stop", 4)
    assert generation.prompt_tokens == len("<user>Hi\n<assistant>")
    assert loader.engines["m"].rendered[-1] == [{"role": "user", "content": "Hi"}]


def test_n_choices_get_consecutive_seeds_and_all_finish(pipeline, loader):
    async def go():
        generation = await pipeline.start(
            GenerationPlan(model="m", turns=HELLO, n=3, sampling=Sampling(seed=7)), record()
        )
        return await finished(generation.events, generation.choices)

    choices = run(go())
    assert [c.text for c in choices] == ["Hello, world!"] * 3
    assert sorted(r.sampling.seed for r in loader.engines["m"].requests) == [7, 8, 9]


def test_a_forced_tool_call_is_compiled_before_admission_and_read_back(pipeline, loader):
    loader.scripts["m"] = FakeScript(
        pieces=('{"tool_calls": [{"name": "get_weather", ', '"arguments": {"city": "Oslo"}}]}'), n_ctx=4096
    )
    plan = GenerationPlan(model="m", turns=HELLO, tools=ToolRequest((WEATHER,), "get_weather"))
    _, events = collect(pipeline, plan)
    engine = loader.engines["m"]
    assert engine.grammars == [engine.requests[-1].grammar]  # compiled first, then generated with
    [start] = [e for e in events if isinstance(e, ToolCallStart)]
    arguments = "".join(e.text for e in events if isinstance(e, ToolCallArguments))
    assert (start.name, json.loads(arguments)) == ("get_weather", {"city": "Oslo"})
    assert events[-1].reason == "tool_calls"


@pytest.mark.parametrize(
    ("plan", "param"),
    [
        (GenerationPlan(model="m", turns=HELLO, sampling=Sampling(logit_bias=((5000, 1.0),))), "logit_bias"),
        (GenerationPlan(model="m", turns=HELLO, n=9), "n"),
        (GenerationPlan(model="m", turns=HELLO, stop=("x" * 501,)), "stop"),
        (GenerationPlan(model="m", turns=HELLO, tools=ToolRequest((WEATHER,), "nope")), "tool_choice"),
        (
            GenerationPlan(model="m", turns=HELLO, json_schema='{"type": "string", "maxLength": 99999}'),
            "maxLength",
        ),
        (GenerationPlan(model="e", turns=HELLO), "model"),
    ],
)
def test_refusals_come_before_any_event_and_name_the_protocols_field(pipeline, loader, plan, param):
    loader.scripts["e"] = FakeScript(embedding_dims=4)  # a generation plan for an embedding model is refused
    with pytest.raises(InvalidRequestError) as caught:
        run(pipeline.start(plan, record()))
    assert caught.value.param.split(".")[-1] == param
    assert all(not engine.requests for engine in loader.engines.values())


def test_the_context_check_names_the_prompt_field(pipeline, loader):
    loader.scripts["m"] = FakeScript(n_ctx=64)
    plan = GenerationPlan(model="m", prompt="x" * 100, params=ParamNames(prompt="prompt"))
    with pytest.raises(ContextLengthExceededError) as caught:
        run(pipeline.start(plan, record()))
    assert caught.value.param == "prompt"


def test_render_and_count_tokens_include_the_tool_instructions(pipeline):
    plan = GenerationPlan(model="m", turns=HELLO, tools=ToolRequest((WEATHER,)))
    prompt = run(pipeline.render(plan, record()))
    assert "get_weather" in prompt
    assert run(pipeline.count_tokens(plan, record())) == len(prompt)  # the fake engine: one token a character


def test_closing_the_events_cancels_the_generation(pipeline, loader):
    loader.scripts["m"] = FakeScript(pieces=("a",) * 50, n_ctx=4096)

    async def go():
        generation = await pipeline.start(GenerationPlan(model="m", turns=HELLO), record())
        await anext(generation.events)
        await generation.events.aclose()

    run(go())
    assert loader.engines["m"].closed_early == 1


@pytest.mark.parametrize(("flag", "kind"), [("embedding", "an embedding model"), ("reranker", "a reranker")])
def test_an_embedding_model_or_reranker_is_refused_before_it_loads(loader, flag, kind):
    """A generation plan for a models.yaml entry of another kind is refused from the entry: nothing is loaded
    (and nothing evicted for it), for generation, the rendered prompt and the token count alike."""
    spec = fake_spec("other").model_copy(update={flag: True})
    pipeline = GenerationPipeline(ModelRegistry([fake_spec("m"), spec], loader))
    plan = GenerationPlan(model="other", turns=HELLO)
    for call in (pipeline.start, pipeline.render, pipeline.count_tokens):
        with pytest.raises(InvalidRequestError) as caught:
            run(call(plan, record()))
        assert caught.value.param == "model" and f"is {kind}, not a generative model" in caught.value.message
    assert loader.loads == []
