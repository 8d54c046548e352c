"""A hand-written fake engine: scripted output, scripted failures, and a record of what it was asked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.config import ModelSpec, PathSource
from server.engine import EngineCounters, EngineInfo, GenerationDelta, GenerationRequest
from server.engine.base import TokenLogprob
from server.engine.text import TextAssembler
from server.errors import OverloadedError


@dataclass
class FakeScript:
    pieces: Sequence[str] = ("Hello", ",", " world", "!")
    fail_after: int | None = None  # raise this many pieces into the stream
    failure: Exception = field(default_factory=lambda: RuntimeError("secret internal detail /opt/x"))
    overloaded: bool = False
    n_ctx: int = 256
    embedding_dims: int | None = None  # set: an embedding model


class FakeEngine:
    def __init__(self, script: FakeScript | None = None) -> None:
        self.script = script or FakeScript()
        self.requests: list[GenerationRequest] = []
        self.rendered: list[list[dict[str, Any]]] = []
        self.grammars: list[str] = []
        self.closed_early = 0
        self.closed = False
        self.crashed = False
        self.in_flight = 0
        self._counters = EngineCounters()

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(n_ctx=self.script.n_ctx, n_vocab=1000, embedding_dims=self.script.embedding_dims)

    @property
    def alive(self) -> bool:
        return not self.crashed

    @property
    def pid(self) -> int | None:
        return None

    def stalled_s(self) -> float:
        return 0.0

    async def counters(self) -> EngineCounters:
        return self._counters

    async def render_chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> str:
        self.rendered.append(list(messages))
        return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"

    async def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return [ord(c) for c in text]  # one token per character keeps counts easy to reason about

    async def detokenize(self, tokens: Sequence[int]) -> list[bytes]:
        return [chr(token).encode() for token in tokens]

    async def tokenize_chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        return await self.tokenize(await self.render_chat(messages, tools))

    async def compile_grammar(self, grammar: str) -> None:
        self.grammars.append(grammar)

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        if self.script.overloaded:
            raise OverloadedError("The model is overloaded; retry shortly.", retry_after=2)
        self.requests.append(request)
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        assembler = TextAssembler(request.stop)
        finished = False
        self.in_flight += 1
        try:
            for count, piece in enumerate(self.script.pieces, start=1):
                if self.script.fail_after is not None and count > self.script.fail_after:
                    raise self.script.failure
                step = assembler.push(piece.encode())
                # A made-up distribution: the piece at -0.5 and its top alternatives below it.
                logprobs = () if request.logprobs is None else (_fake_logprob(piece, request.logprobs),)
                if step.stopped:
                    finished = True
                    yield GenerationDelta(step.text, count, "stop", logprobs, step.stop)
                    return
                if count >= request.max_tokens:
                    finished = True
                    yield GenerationDelta(step.text + assembler.finish(), count, "length", logprobs)
                    return
                if step.text:
                    yield GenerationDelta(step.text, count, logprobs=logprobs)
            finished = True
            yield GenerationDelta(assembler.finish(), len(self.script.pieces), "stop")
        finally:
            self.in_flight -= 1
            if not finished:
                self.closed_early += 1

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        # A vector per input from its first tokens, normalised: equal inputs give equal vectors.
        dims = self.script.embedding_dims or 0
        vectors = []
        for tokens in inputs:
            raw = [float((tokens[i % len(tokens)] % 7) + i) for i in range(dims)]
            norm = sum(v * v for v in raw) ** 0.5
            vectors.append([v / norm for v in raw])
        return vectors

    def close(self) -> None:
        self.closed = True


def fake_spec(name: str, *aliases: str, n_ctx: int = 256) -> ModelSpec:
    return ModelSpec(name=name, aliases=aliases, source=PathSource(path="/nonexistent.gguf"), n_ctx=n_ctx)


def _fake_logprob(piece: str, top_n: int) -> TokenLogprob:
    top = tuple((f"{piece}~{i}".encode(), -0.5 - i) for i in range(top_n))
    return TokenLogprob(piece.encode(), -0.5, top)
