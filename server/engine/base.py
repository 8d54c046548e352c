"""The engine interface: what the service needs from a loaded model, and nothing more."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length"]
Priority = Literal["interactive", "batch"]
GRAMMAR_BUILD_BUDGET_S = 10.0
"""How long llama.cpp may take to build one output grammar before the request is refused (and its text is
remembered as too complex: server/engine/grammar.py)."""
GRAMMAR_STEP_LIMIT_S = 0.25
"""The most CPU time one token's grammar work may take on the scheduler thread (SLM_GRAMMAR_STEP_LIMIT_S)."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class ReasoningFormat:
    """How a reasoning model marks its thinking in its output, and how its chat template turns thinking off."""

    start: str = "<think>"
    end: str = "</think>"
    budget_tokens: int = 2048
    """Tokens of thinking after which the end marker is forced, at the default effort."""
    switch: str | None = None
    """The chat template's variable that turns thinking on and off (`enable_thinking`); None: it has none."""
    implicit_start: bool = False
    """The block is open from the reply's first token, though no prompt writes `start` (the first DeepSeek-R1
    templates mention only `</think>`): a `start` the model writes first anyway is dropped, not thinking."""


@dataclass(frozen=True)
class ThinkingBudget:
    """A reply's thinking block: its markers, and how many tokens of it may come before the end is forced."""

    start: str
    end: str
    tokens: int
    inside: bool = False
    """The reply begins inside the block: the prompt opened it, or it opens implicitly (else the reply may open one
    as it begins)."""
    implicit_start: bool = False
    """With `inside`: no start marker opened the block, so one the reply writes first is dropped, not thinking."""


@dataclass(frozen=True)
class RGBImage:
    """A decoded image: `pixels` holds width * height RGB triples, row by row."""

    width: int
    height: int
    pixels: bytes

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1 or len(self.pixels) != self.width * self.height * 3:
            raise ValueError("an RGB image needs width * height * 3 bytes")

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the size and pixels: what the image's KV is keyed by (two encodings of the same pixels
        share it; different pixels never do)."""
        return hashlib.sha256(b"%d %d\n" % (self.width, self.height) + self.pixels).hexdigest()


@dataclass(frozen=True)
class GenerationRequest:
    prompt_tokens: Sequence[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: Sequence[str] = ()
    logprobs: int | None = None
    """None: no log probabilities; n >= 0: each token's, with the n most likely alternatives."""
    grammar: str | None = None
    """A GBNF grammar (root rule `root`) the output must follow; compiled by `compile_grammar` beforehand."""
    thinking: ThinkingBudget | None = None
    """A reasoning model's thinking block, and after how many of its tokens its end marker is forced."""
    shown_tokens: tuple[str, ...] = ()
    """Control tokens (by their text) the reply's text shows: the markers of the model's tool-call syntax
    (`[TOOL_CALLS]`, `<|python_tag|>`), which the pipeline reads back. Other control tokens show no text."""
    grammar_step_limit_s: float = GRAMMAR_STEP_LIMIT_S
    """A token whose grammar work takes longer than this ends the request with GrammarTooComplexError (400)."""
    priority: Priority = "interactive"
    """`batch`: runs only in the capacity interactive requests leave. It is admitted only into a free sequence
    (else `NoRoomForBatch`), and gives its sequence up, ending with PreemptedError, when an interactive request
    waits for one."""
    images: tuple[RGBImage, ...] = ()
    """The images of the prompt, in order: `prompt_tokens` holds each row of their embeddings as a negative
    pseudo token id (as `tokenize_chat` with images returns them)."""


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log probability under the model (before sampling settings), and the top others."""

    piece: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(frozen=True)
class GenerationDelta:
    """New text since the last delta. `finish_reason` is set on the last one only."""

    text: str
    completion_tokens: int
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    """The tokens generated since the last delta, when the request asked for log probabilities."""
    stop_sequence: str | None = None
    """On the last delta: the stop string that ended generation, if one did."""


@dataclass(frozen=True)
class EngineInfo:
    n_ctx: int
    """The most tokens (prompt plus completion) one request may occupy."""
    n_vocab: int
    embedding_dims: int | None = None
    """Vector size, for embedding models; None for generative ones."""
    tool_dialect: str | None = None
    """The tool-call syntax the model's own chat template teaches (server/engine/tool_syntax.py), if one we read."""
    reasoning: ReasoningFormat | None = None
    """How the model thinks before it answers, for a reasoning model (from models.yaml or its chat template)."""
    reranker: bool = False
    """A cross-encoder reranker: it scores (query, document) pairs, and serves neither generation nor embeddings."""
    process_bytes: int | None = None
    """The resident memory of the engine's worker process before its model loaded (None: not measured)."""
    vision: bool = False
    """The model takes images (it has a projector)."""


@dataclass
class EngineCounters:
    """Running totals an engine keeps for the metrics endpoint and the tests."""

    queue_depth: int = 0
    active_sequences: int = 0
    decode_steps: int = 0
    batch_tokens_total: int = 0
    prompt_tokens_evaluated: int = 0
    prefix_cache_hit_tokens: int = 0
    generated_tokens: int = 0
    batch_preemptions: int = 0
    """Batch requests ended (PreemptedError) to give their sequence to a waiting interactive request."""
    draft_tokens: int = 0
    """Tokens drafted by speculative decoding and verified by the model."""
    draft_accepted_tokens: int = 0
    """Drafted tokens the model's own sampling agreed with (kept)."""
    image_chunks_encoded: int = 0
    """Image chunks the vision projector encoded (a chunk sent again soon after is not encoded again)."""
    image_rows_evaluated: int = 0
    """Rows of image embeddings decoded into sequences' KV (rows found in a cached prefix are not)."""


class Engine(Protocol):
    """A loaded model. Streams are async; closing one early cancels it and frees its sequence."""

    @property
    def info(self) -> EngineInfo: ...

    @property
    def in_flight(self) -> int:
        """Generation streams admitted and not finished: the registry never unloads a busy engine."""
        ...

    @property
    def pid(self) -> int | None:
        """The process serving the model, where it has its own (its memory is measured); None otherwise."""
        ...

    def stalled_s(self) -> float:
        """How long the engine has been inside its current step of work, 0 while idle (the watchdog's measure)."""
        ...

    @property
    def alive(self) -> bool:
        """False once the engine can serve no more (its worker process died)."""
        ...

    async def counters(self) -> EngineCounters: ...

    async def render_chat(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        template_vars: Mapping[str, Any] | None = None,
    ) -> str:
        """The prompt text for a conversation, by the model's own chat template, ready for the reply.
        `template_vars` are extra variables for the template (a reasoning model's `enable_thinking`)."""
        ...

    async def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Tokens of a prompt: with `add_special`, the model's BOS where it wants one; with `parse_special`,
        control-token text becomes the control token."""
        ...

    async def detokenize(self, tokens: Sequence[int]) -> list[bytes]:
        """Each token's piece (bytes: a piece may be part of a UTF-8 character), control tokens as their text."""
        ...

    async def tokenize_chat(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
        template_vars: Mapping[str, Any] | None = None,
        images: Sequence[RGBImage] = (),
        image_marker: str = "",
    ) -> list[int]:
        """The tokens of `render_chat`'s prompt, in which only the template's own markup becomes control tokens:
        message contents are tokenized as plain text. With `images` (a vision model), each occurrence of
        `image_marker` in a content stands for the next image, and each row of an image's embeddings is a negative
        pseudo token id (stable for the same image at the same place; generate() takes the same images)."""
        ...

    async def compile_grammar(self, grammar: str) -> None:
        """Build an output grammar ahead of generation (cached by its text); a 400 when llama.cpp refuses it, or
        when its text is known to take longer than GRAMMAR_BUILD_BUDGET_S to build (grammar_too_complex); a 503
        while another build runs past that budget."""
        ...

    def check_batch_room(self, sequences: int = 1) -> None:
        """Raise NoRoomForBatch unless a batch request of `sequences` choices may start now (asked before any
        work is done for one, and again in the same synchronous stretch as its `generate` calls); engines that
        place batch requests themselves never raise."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """Start generating; raises at once (before any delta) when the request cannot be admitted: a 429 for an
        interactive request. A batch request is admitted as it is: its caller has just asked
        `check_batch_room` for all of its choices."""
        ...

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """Pooled, L2-normalised vectors of token sequences (embedding models; others raise a 400)."""
        ...

    async def rerank_tokens(self, query: str, documents: Sequence[str], max_tokens: int) -> list[list[int]]:
        """Each (query, document) pair as the model's input: its `rerank` template where the file has one, else
        llama.cpp's [BOS] query [EOS] [SEP] document [EOS]; client text never becomes control tokens. A pair
        longer than the context, or pairs of more than `max_tokens` tokens in all, are a 400, refused before all
        are built (rerankers; others raise a 400)."""
        ...

    async def rerank(self, inputs: Sequence[Sequence[int]]) -> list[float]:
        """The relevance score of each pair's tokens, as llama.cpp's rank pooling computes it (the classification
        head's first output, unnormalised); rerankers only, others raise a 400."""
        ...

    def close(self) -> None: ...
