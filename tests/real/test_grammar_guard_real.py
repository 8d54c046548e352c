"""A grammar llama.cpp would follow at a cost that multiplies with every token ends with a grammar_too_complex error
within bounded time, while the model's other sequences keep going and its worker lives on; and sampling only the
top candidates under a grammar picks, greedily, what the whole vocabulary would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import httpx
import openai
import pytest

from server.engine import GenerationRequest
from server.engine import grammar as grammar_module
from server.engine.llama import LlamaCppEngine
from server.errors import GrammarTooComplexError
from tests.real.conftest import ServerProcess
from tests.real.test_engine_real import chat_request, run_one, smollm2_spec

pytestmark = pytest.mark.real

SMOL = "smollm2-135m-instruct"
# Only `a`s can come first (forty of them before anything else is allowed), so the model must write them; and every
# `a` doubles the ways the text so far can be parsed (each recursion can still end in `b` or in `c`). Recursive: no
# static bound sees it; the scheduler's per-token limit does.
STACK_BOMB = 'root ::= s\ns ::= "a" s "b" | "a" s "c" | "a"{40} "d"\n'
ENDS_WITHIN_S = 120  # generous: the guard ends it within a few tokens, each well under a second


def test_the_stack_bomb_ends_with_an_error_while_another_sequence_keeps_going():
    engine = LlamaCppEngine.load(smollm2_spec(parallel=2, n_ctx=1024))
    try:
        counting = chat_request(engine, "Count from one to a hundred.", max_tokens=900, temperature=0, ignore_eos=True)
        writing = chat_request(engine, "Write the letter a many times.", max_tokens=300, temperature=0)
        writing = GenerationRequest(writing.prompt_tokens, 300, writing.sampling, grammar=STACK_BOMB)

        async def scenario() -> tuple[BaseException | None, bool]:
            await engine.compile_grammar(STACK_BOMB)
            bomb_ended = asyncio.Event()

            async def other() -> bool:
                """Whether the other sequence produced a token after the bomb ended."""
                async with contextlib.aclosing(engine.generate(counting)) as deltas:  # type: ignore[type-var]
                    async for delta in deltas:
                        if bomb_ended.is_set() and delta.finish_reason is None:
                            return True
                return False

            async def bomb() -> BaseException | None:
                try:
                    async for _ in engine.generate(writing):
                        pass
                except GrammarTooComplexError as exc:
                    return exc
                finally:
                    bomb_ended.set()
                return None

            other_task = asyncio.create_task(other())
            failure = await asyncio.wait_for(bomb(), ENDS_WITHIN_S)
            return failure, await asyncio.wait_for(other_task, ENDS_WITHIN_S)

        started = time.monotonic()
        failure, went_on = asyncio.run(scenario())
        assert isinstance(failure, GrammarTooComplexError), failure
        assert failure.status_code == 400 and "too ambiguous" in failure.message
        assert time.monotonic() - started < ENDS_WITHIN_S
        assert went_on, "the other sequence produced nothing after the stack bomb ended"
    finally:
        engine.close()


NO_STEP_LIMIT_S = 600.0
GRAMMARS = [
    # Text the model rarely picks first: most tokens fall back to the grammar.
    'root ::= [a-z ]{10,80} "."\n',
    'root ::= "{" "\\"name\\": \\"" [A-Z] [a-z]{2,12} "\\", \\"age\\": " [1-9] [0-9]? "}"\n',
    'root ::= ("yes" | "no" | "maybe") (", " ("yes" | "no" | "maybe")){0,20}\n',
]


@pytest.mark.parametrize("grammar", GRAMMARS)
def test_greedy_under_a_grammar_is_the_same_from_the_top_candidates_as_from_the_whole_vocabulary(grammar, monkeypatch):
    engine = LlamaCppEngine.load(smollm2_spec(parallel=1, n_ctx=512))
    try:

        def greedy(text: str) -> str:
            request = chat_request(engine, text, max_tokens=60, temperature=0)
            # No time limit per token: the whole vocabulary through the grammar is slow by design (0.67 s for one
            # token on a 2-core EPYC), and this test is about which token wins, not how long it takes.
            request = GenerationRequest(
                request.prompt_tokens, 60, request.sampling, grammar=grammar, grammar_step_limit_s=NO_STEP_LIMIT_S
            )
            return asyncio.run(_compiled_then(engine, grammar, request))

        prompts = ["Describe the sea.", "Who are you?", "Should I go out today?"]
        from_top = [greedy(p) for p in prompts]
        monkeypatch.setattr(grammar_module, "TOP_CANDIDATES", engine.info.n_vocab)  # the whole vocabulary
        whole = [greedy(p) for p in prompts]
        assert from_top == whole
        assert all(from_top)
    finally:
        engine.close()


async def _compiled_then(engine: LlamaCppEngine, grammar: str, request: GenerationRequest) -> str:
    await engine.compile_grammar(grammar)
    return await run_one(engine, request)


def _restarts(server: ServerProcess) -> float:
    text = httpx.get(server.url + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("slm_worker_restarts_total")
    )


def test_over_http_the_stack_bomb_is_a_400_then_an_error_event_and_the_worker_lives_on(
    api: openai.OpenAI, server: ServerProcess
):
    restarts = _restarts(server)
    ask = [{"role": "user", "content": "Write the letter a many times."}]
    # Another stream on the same model, running all along.
    other = api.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "Count from one to one hundred."}],
        max_tokens=900,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = iter(other)
    next(chunks)
    pids = server.worker_pids(SMOL)  # loaded now
    bomb_done = threading.Event()
    after_bomb: list[str] = []

    def read_other() -> None:
        for chunk in chunks:
            if bomb_done.is_set() and chunk.choices and chunk.choices[0].delta.content:
                after_bomb.append(chunk.choices[0].delta.content)
                return  # it went on after the bomb: enough

    reader = threading.Thread(target=read_other, daemon=True)
    reader.start()
    try:
        started = time.monotonic()
        with pytest.raises(openai.BadRequestError) as caught:
            api.chat.completions.create(model=SMOL, messages=ask, max_tokens=300, extra_body={"grammar": STACK_BOMB})
        error = caught.value.body
        assert error["code"] == "grammar_too_complex" and error["param"] == "grammar", error
        # Streamed: an error event, then the end.
        with httpx.stream(
            "POST",
            server.url + "/v1/chat/completions",
            json={
                "model": SMOL,
                "messages": ask,
                "max_tokens": 300,
                "stream": True,
                "structured_outputs": {"grammar": STACK_BOMB},
            },
            timeout=ENDS_WITHIN_S,
        ) as response:
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        event = json.loads(lines[-2].removeprefix("data: "))
        assert event["error"]["code"] == "grammar_too_complex", event
        assert event["error"]["param"] == "structured_outputs.grammar"
        assert time.monotonic() - started < ENDS_WITHIN_S
    finally:
        bomb_done.set()
        reader.join(ENDS_WITHIN_S)
        other.close()
    assert after_bomb, "the other stream produced nothing after the stack bomb ended"
    assert _restarts(server) == restarts and server.worker_pids(SMOL) == pids
