"""Reasoning models through the pipeline with the fake engine: thinking split off the answer, the template's
switch set, the budget forcing the end marker, and tool calls and JSON read from the answer only."""

from __future__ import annotations

import asyncio
import json

import pytest

from server.engine.base import ReasoningFormat
from server.generation.pipeline import GenerationPipeline
from server.generation.plan import FunctionSpec, GenerationPlan, ReasoningRequest, ToolRequest, Turn
from server.generation.reply import ChoiceEnd, ReasoningPiece, TextPiece, ToolCallArguments, ToolCallStart, finished
from server.metrics import RequestRecord
from server.models.registry import ModelRegistry
from tests.conftest import FakeLoader
from tests.fakes import FakeScript, fake_spec

HELLO = (Turn("user", "Hi"),)
QWEN3 = ReasoningFormat("<think>", "</think>", 64, "enable_thinking")  # the model opens its own block
R1 = ReasoningFormat("<think>", "</think>", 64, None)  # the prompt opens the block; no switch
THOUGHT = ("<think>", "\nLet me ", "think.\n</", "think>", "\n\nHello", "!")
WEATHER = FunctionSpec("get_weather", "Weather", {"type": "object", "properties": {"city": {"type": "string"}}})


def record() -> RequestRecord:
    return RequestRecord(request_id="t", method="POST", path="/")


@pytest.fixture
def loader() -> FakeLoader:
    return FakeLoader()


@pytest.fixture
def pipeline(loader) -> GenerationPipeline:
    return GenerationPipeline(ModelRegistry([fake_spec("m", n_ctx=4096)], loader))


def script(loader: FakeLoader, pieces, fmt: ReasoningFormat = QWEN3, **fields) -> None:
    loader.scripts["m"] = FakeScript(pieces=pieces, n_ctx=4096, reasoning=fmt, **fields)


def events_of(pipeline: GenerationPipeline, plan: GenerationPlan):
    async def go():
        generation = await pipeline.start(plan, record())
        return generation, [event async for event in generation.events]

    return asyncio.run(go())


def texts(events, kind) -> str:
    return "".join(event.text for event in events if isinstance(event, kind))


def test_thinking_comes_apart_from_the_answer_and_its_tokens_are_counted(pipeline, loader):
    script(loader, THOUGHT)
    generation, events = events_of(pipeline, GenerationPlan(model="m", turns=HELLO))
    assert generation.thinking
    assert (texts(events, ReasoningPiece), texts(events, TextPiece)) == ("Let me think.", "Hello!")
    assert isinstance(events[0], ReasoningPiece)
    assert events[-1] == ChoiceEnd(0, "stop", 6, reasoning_tokens=4)  # up to the piece that ended the block
    assert loader.engines["m"].template_vars[-1] == {}  # the template's own default
    request = loader.engines["m"].requests[-1]
    assert request.thinking.tokens == 64 and not request.thinking.inside


def test_a_reply_that_begins_inside_the_block(pipeline, loader):
    script(loader, ("2 + 2", " = 4", "</think>", "4"), R1, opens_thinking=True)
    _, events = events_of(pipeline, GenerationPlan(model="m", turns=HELLO))
    assert (texts(events, ReasoningPiece), texts(events, TextPiece)) == ("2 + 2 = 4", "4")
    assert loader.engines["m"].requests[-1].thinking.inside


def test_thinking_off_sets_the_switch_and_the_prompt_closes_the_block(pipeline, loader):
    script(loader, ("Hello",))
    plan = GenerationPlan(model="m", turns=HELLO, reasoning=ReasoningRequest(enabled=False))
    generation, events = events_of(pipeline, plan)
    engine = loader.engines["m"]
    assert engine.template_vars[-1] == {"enable_thinking": False}
    assert not generation.thinking and engine.requests[-1].thinking is None  # nothing left to split
    assert texts(events, TextPiece) == "Hello" and events[-1].reasoning_tokens == 0


def test_the_budget_forces_the_end_marker(pipeline, loader):
    script(loader, ("<think>", "a", "b", "c", "</think>", "done"))
    plan = GenerationPlan(model="m", turns=HELLO, reasoning=ReasoningRequest(enabled=True, budget_tokens=2))
    _, events = events_of(pipeline, plan)
    assert loader.engines["m"].template_vars[-1] == {"enable_thinking": True}
    assert texts(events, ReasoningPiece) == "a"  # "<think>" and "a": two tokens, then "</think>" was forced
    assert texts(events, TextPiece).startswith("bc")
    assert events[-1].reasoning_tokens == 3


def test_a_reply_cut_off_while_thinking_is_all_thinking(pipeline, loader):
    script(loader, ("<think>", "long", " thought", "</think>", "late"))
    _, events = events_of(pipeline, GenerationPlan(model="m", turns=HELLO, max_tokens=3))
    assert (texts(events, ReasoningPiece), texts(events, TextPiece)) == ("long thought", "")
    assert events[-1] == ChoiceEnd(0, "length", 3, reasoning_tokens=3)


def test_json_output_is_constrained_after_the_thinking(pipeline, loader):
    script(loader, ("<think>", "an object", "</think>", '{"a": 1}'))
    plan = GenerationPlan(model="m", turns=HELLO, json_schema="{}", reasoning=ReasoningRequest(enabled=True))
    _, events = events_of(pipeline, plan)
    grammar = loader.engines["m"].requests[-1].grammar
    assert loader.engines["m"].grammars == [grammar]  # the wrapped grammar is the one compiled
    assert 'root ::= "<think>" thinking-0 ' in grammar and "thinking-answer ::= " in grammar
    assert json.loads(texts(events, TextPiece)) == {"a": 1}
    default = GenerationPlan(model="m", turns=HELLO, json_schema="{}")
    events_of(pipeline, default)
    assert 'root ::= ("<think>" thinking-0 ' in loader.engines["m"].requests[-1].grammar  # optional when not asked


def test_tool_calls_are_read_from_the_answer_after_the_thinking(pipeline, loader):
    call = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}'
    script(loader, ("<think>", "I need the weather.", "</think>", "\n", call))
    _, events = events_of(pipeline, GenerationPlan(model="m", turns=HELLO, tools=ToolRequest((WEATHER,))))
    assert texts(events, ReasoningPiece) == "I need the weather."
    [start] = [e for e in events if isinstance(e, ToolCallStart)]
    arguments = "".join(e.text for e in events if isinstance(e, ToolCallArguments))
    assert (start.name, json.loads(arguments)) == ("get_weather", {"city": "Oslo"})
    assert events[-1].reason == "tool_calls" and events[-1].reasoning_tokens == 3
    forced = GenerationPlan(model="m", turns=HELLO, tools=ToolRequest((WEATHER,), "required"))
    events_of(pipeline, forced)
    assert "thinking-answer ::= " in loader.engines["m"].requests[-1].grammar


def test_each_choice_is_split_on_its_own(pipeline, loader):
    script(loader, THOUGHT)

    async def go():
        generation = await pipeline.start(GenerationPlan(model="m", turns=HELLO, n=3), record())
        return await finished(generation.events, generation.choices)

    choices = asyncio.run(go())
    assert [(c.reasoning, c.text, c.end.reasoning_tokens) for c in choices] == [("Let me think.", "Hello!", 4)] * 3


def test_raw_prompts_are_not_split(pipeline, loader):
    script(loader, THOUGHT)
    generation, events = events_of(pipeline, GenerationPlan(model="m", prompt="Hi"))
    assert not generation.thinking and texts(events, TextPiece) == "".join(THOUGHT)


def test_thinking_markers_are_shown_as_text_so_control_token_markers_can_be_split_off(pipeline, loader):
    command = ReasoningFormat("<|START_THINKING|>", "<|END_THINKING|>", 64, None)  # control tokens in its vocabulary
    script(loader, ("<|START_THINKING|>", "hm", "<|END_THINKING|>", "Hi"), command)
    _, events = events_of(pipeline, GenerationPlan(model="m", turns=HELLO))
    assert set(loader.engines["m"].requests[-1].shown_tokens) >= {"<|START_THINKING|>", "<|END_THINKING|>"}
    assert (texts(events, ReasoningPiece), texts(events, TextPiece)) == ("hm", "Hi")


EARLY_R1 = ReasoningFormat("<think>", "</think>", 64, None, implicit_start=True)  # no <think> in its template at all


@pytest.mark.parametrize(
    "pieces",
    [
        ("I th", "ink..", ".</", "think", ">The ", "answer"),
        ("\n", "<th", "ink>", "\nI think...", "</think>", "\n\nThe answer"),  # <think> written anyway: dropped
    ],
)
def test_an_implicit_block_is_thinking_from_the_first_token(pipeline, loader, pieces):
    script(loader, pieces, EARLY_R1)
    generation, events = events_of(pipeline, GenerationPlan(model="m", turns=HELLO))
    assert generation.thinking
    assert (texts(events, ReasoningPiece), texts(events, TextPiece)) == ("I think...", "The answer")
    thinking = loader.engines["m"].requests[-1].thinking
    assert thinking.inside and thinking.implicit_start
    assert events[-1].reasoning_tokens == 5  # through the piece that closed the block


def test_an_implicit_block_never_closed_is_all_thinking(pipeline, loader):
    script(loader, ("<think>", "going", " on"), EARLY_R1)
    _, events = events_of(pipeline, GenerationPlan(model="m", turns=HELLO))
    assert (texts(events, ReasoningPiece), texts(events, TextPiece)) == ("going on", "")
    assert events[-1] == ChoiceEnd(0, "stop", 3, reasoning_tokens=3)


@pytest.mark.parametrize(("pieces", "thought"), [(("a", "b", "c", "d"), "ab"), (("<think>", "a", "b", "c"), "a")])
def test_the_budget_of_an_implicit_block_counts_from_the_first_token(pipeline, loader, pieces, thought):
    script(loader, pieces, EARLY_R1)
    plan = GenerationPlan(model="m", turns=HELLO, reasoning=ReasoningRequest(enabled=True, budget_tokens=2))
    _, events = events_of(pipeline, plan)
    assert texts(events, ReasoningPiece) == thought  # two tokens, then "</think>" was forced
    assert texts(events, TextPiece) == "".join(pieces[2:])
    assert events[-1].reasoning_tokens == 3


def test_json_after_an_implicit_block_may_follow_a_start_marker_or_none(pipeline, loader):
    script(loader, ("<think>", "an object", "</think>", '{"a": 1}'), EARLY_R1)
    plan = GenerationPlan(model="m", turns=HELLO, json_schema="{}", reasoning=ReasoningRequest(enabled=True))
    _, events = events_of(pipeline, plan)
    assert 'root ::= ([ \\x09\\x0A\\x0D]{0,8} "<think>")? thinking-0 ' in loader.engines["m"].requests[-1].grammar
    assert texts(events, ReasoningPiece) == "an object" and json.loads(texts(events, TextPiece)) == {"a": 1}
