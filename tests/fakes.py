"""A hand-written fake engine: scripted output, scripted failures, and a record of what it was asked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.config import ModelSpec, PathSource
from server.engine import EngineCounters, EngineInfo, GenerationDelta, GenerationRequest
from server.engine.base import ReasoningFormat, RGBImage, TokenLogprob
from server.engine.reasoning import ThinkingLimit
from server.engine.room import RoomSignal
from server.engine.text import TextAssembler
from server.errors import ContextLengthExceededError, InvalidRequestError, NoRoomForBatch, OverloadedError

PAIR_SEPARATOR = -1  # between the query and the document of a fake reranker's pair
FORCED_END = -2  # the token a fake reasoning model's forced end of thinking is
IMAGE_TOKENS = 4  # the pseudo ids a fake vision model's image takes in a prompt


@dataclass
class FakeScript:
    pieces: Sequence[str] = ("Hello", ",", " world", "!")
    fail_after: int | None = None  # raise this many pieces into the stream
    failure: Exception = field(default_factory=lambda: RuntimeError("secret internal detail /opt/x"))
    overloaded: bool = False
    n_ctx: int = 256
    embedding_dims: int | None = None  # set: an embedding model
    reranker: bool = False  # a reranker: a pair's score is its document's length, in tokens
    reasoning: ReasoningFormat | None = None  # set: a reasoning model (its thinking budget is honoured)
    opens_thinking: bool = False  # the template ends the prompt inside the thinking block, as DeepSeek-R1's does
    tool_dialect: str | None = None  # the tool-call syntax its template teaches (server/engine/tool_syntax.py)
    parallel: int | None = None  # set: a batch request finds no room (NoRoomForBatch) while this many streams run
    process_bytes: int | None = None  # the worker's own size, as a worker measures it before its model loads
    vision: bool = False  # takes images: each stands in the prompt as IMAGE_TOKENS negative ids from its digest


class FakeEngine:
    def __init__(self, script: FakeScript | None = None) -> None:
        self.script = script or FakeScript()
        self.requests: list[GenerationRequest] = []
        self.rendered: list[list[dict[str, Any]]] = []
        self.grammars: list[str] = []
        self.template_vars: list[dict[str, Any]] = []
        self.closed_early = 0
        self.closed = False
        self.crashed = False
        self.in_flight = 0  # streams started (first read) and not ended
        self._counters = EngineCounters()
        self._room = RoomSignal()

    @property
    def info(self) -> EngineInfo:
        script = self.script
        return EngineInfo(
            n_ctx=script.n_ctx,
            n_vocab=1000,
            embedding_dims=script.embedding_dims,
            reranker=script.reranker,
            reasoning=script.reasoning,
            tool_dialect=script.tool_dialect,
            process_bytes=script.process_bytes,
            vision=script.vision,
        )

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
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        template_vars: Mapping[str, Any] | None = None,
    ) -> str:
        self.rendered.append(list(messages))
        self.template_vars.append(dict(template_vars or {}))
        prompt = "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"
        thinking = self.script.reasoning
        if thinking is not None and thinking.switch and (template_vars or {}).get(thinking.switch) is False:
            return prompt + f"{thinking.start}\n\n{thinking.end}\n\n"  # as Qwen3's template does
        return prompt + (f"{thinking.start}\n" if thinking is not None and self.script.opens_thinking else "")

    async def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return [ord(c) for c in text]  # one token per character keeps counts easy to reason about

    async def detokenize(self, tokens: Sequence[int]) -> list[bytes]:
        return [chr(token).encode() for token in tokens]

    async def tokenize_chat(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        template_vars: Mapping[str, Any] | None = None,
        images: Sequence[RGBImage] = (),
        image_marker: str = "",
    ) -> list[int]:
        text = await self.render_chat(messages, tools, template_vars)
        if not images:
            return await self.tokenize(text)
        if not self.script.vision:
            raise InvalidRequestError("The model does not take images.", param="messages")
        pieces = text.split(image_marker)
        assert len(pieces) == len(images) + 1, "every image has its marker in the rendered prompt"
        tokens = await self.tokenize(pieces[0])
        for image, piece in zip(images, pieces[1:], strict=True):
            base = int(image.digest[:8], 16)
            tokens += [-(1 + base + i) for i in range(IMAGE_TOKENS)] + await self.tokenize(piece)
        return tokens

    async def compile_grammar(self, grammar: str) -> None:
        self.grammars.append(grammar)

    def check_batch_room(self, sequences: int = 1) -> None:
        parallel = self.script.parallel
        if parallel is not None and self.in_flight + min(sequences, parallel) > parallel:
            raise NoRoomForBatch(self.room_freed)

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
            count = 0
            for count, piece in enumerate(self._pieces(request), start=1):
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
            yield GenerationDelta(assembler.finish(), count, "stop")
        finally:
            self.in_flight -= 1
            if not finished:
                self.closed_early += 1
            self._room.notify()

    async def room_freed(self) -> None:
        """Return when the next stream ends (as ProcessEngine's does when a request is released)."""
        await self._room.wait()

    def _pieces(self, request: GenerationRequest) -> Iterator[str]:
        """The script's pieces, one a token; with a thinking budget, its end marker is forced as the real engine
        forces it, once the block has run that many pieces."""
        if request.thinking is None:
            yield from self.script.pieces
            return
        limit, pieces = ThinkingLimit(request.thinking, (FORCED_END,)), list(self.script.pieces)
        while pieces:
            token, piece = (FORCED_END, request.thinking.end) if limit.forced() is not None else (0, pieces.pop(0))
            limit.push(token, piece.encode())
            yield piece

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        # A vector per input from its first tokens, normalised: equal inputs give equal vectors.
        dims = self.script.embedding_dims or 0
        vectors = []
        for tokens in inputs:
            raw = [float((tokens[i % len(tokens)] % 7) + i) for i in range(dims)]
            norm = sum(v * v for v in raw) ** 0.5
            vectors.append([v / norm for v in raw])
        return vectors

    async def rerank_tokens(self, query: str, documents: Sequence[str], max_tokens: int) -> list[list[int]]:
        # query, a separator, document; the bounds the real engine applies, with its params
        if not self.script.reranker:
            raise InvalidRequestError("not a reranker", param="model")
        pairs, total = [], 0
        for index, document in enumerate(documents):
            pair = [*await self.tokenize(query), PAIR_SEPARATOR, *await self.tokenize(document)]
            if len(pair) > self.script.n_ctx:
                raise ContextLengthExceededError("too long", param=f"documents[{index}]")
            total += len(pair)
            if total > max_tokens:
                raise InvalidRequestError(f"more than {max_tokens} tokens", param="documents")
            pairs.append(pair)
        return pairs

    async def rerank(self, inputs: Sequence[Sequence[int]]) -> list[float]:
        return [float(len(pair) - list(pair).index(PAIR_SEPARATOR) - 1) for pair in inputs]

    def close(self) -> None:
        self.closed = True


def fake_spec(name: str, *aliases: str, n_ctx: int = 256) -> ModelSpec:
    return ModelSpec(name=name, aliases=aliases, source=PathSource(path="/nonexistent.gguf"), n_ctx=n_ctx)


def _fake_logprob(piece: str, top_n: int) -> TokenLogprob:
    top = tuple((f"{piece}~{i}".encode(), -0.5 - i) for i in range(top_n))
    return TokenLogprob(piece.encode(), -0.5, top)
