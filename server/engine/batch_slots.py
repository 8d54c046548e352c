"""The scheduler's view of one request (`Job`) and of one llama.cpp sequence (`Slot`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp

from server.engine.base import GenerationDelta, GenerationRequest, TokenLogprob
from server.engine.delta_outlet import DeltaSink, Forwarded
from server.engine.delta_stream import DeltaStream
from server.engine.grammar_guard import StepGuard
from server.engine.image_inputs import ImagePrompt, Wake
from server.engine.reasoning import ThinkingLimit
from server.engine.speculative import Drafter
from server.engine.text import TextAssembler


class Job(DeltaStream):
    """One request's side of the scheduler: its deltas, pushed from the scheduler thread; closing it cancels the
    request (the scheduler drops it at its next step)."""

    def __init__(
        self,
        request: GenerationRequest,
        loop: asyncio.AbstractEventLoop,
        wake: Wake,
        grammar: llama_cpp.llama_sampler_p | None = None,
        thinking: ThinkingLimit | None = None,
        shown: frozenset[int] = frozenset(),
        images: ImagePrompt | None = None,
        sink: DeltaSink | None = None,
    ):
        super().__init__(asyncio.Queue())
        self.request = request
        self.images = images  # the chunks of the prompt's images, owned by the job (freed by the scheduler)
        self.grammar = grammar  # owned by the job until a sequence takes it
        self.thinking = thinking
        self.shown = shown  # control tokens whose text the reply shows (a tool-call syntax's markers)
        self.cancelled = False
        self.batch = request.priority == "batch"  # runs only in capacity interactive requests leave
        # Where its deltas and its failure go from the scheduler's thread, in the order they are made; its stream
        # then yields only the last delta, or raises Forwarded in place of the failure.
        self.sink = sink
        self._loop = loop
        self._wake = wake

    def emit(self, item: GenerationDelta | BaseException) -> None:
        if self.sink is not None:
            if self.cancelled:
                return  # its request is over where the sink leads: nothing more goes out for it
            self.sink(item)
            if isinstance(item, BaseException):
                item = Forwarded()
            elif item.finish_reason is None:
                return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            self.cancelled = True

    def _release(self, *, cancel: bool) -> None:
        if cancel:
            self.cancelled = True
            self._wake.signal()


@dataclass
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds
    job: Job | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens still to evaluate
    sampler: llama_cpp.llama_sampler_p | None = None
    grammar: llama_cpp.llama_sampler_p | None = None
    guard: StepGuard | None = None  # the grammar's per-token time limit
    thinking: ThinkingLimit | None = None  # a reasoning model's thinking budget
    shown: frozenset[int] = frozenset()  # control tokens detokenized as their text
    assembler: TextAssembler | None = None
    generated: int = 0
    next_token: int | None = None  # sampled, not yet evaluated
    batch_index: int = -1  # where this sequence's logits are in the current batch
    last_used: int = 0  # admission counter value when it last took a request
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of tokens not yet sent in a delta
    unsent: str = ""  # text of this step's tokens, sent in one delta at the step's end
    drafter: Drafter | None = None  # where the model drafts by prompt lookup
    draft: list[int] = field(default_factory=list)  # drafted tokens in the current batch, after `next_token`
    draft_indices: list[int] = field(default_factory=list)  # their places in the batch
    drafted_by_lookup: bool = False  # the draft came from prompt lookup (not the draft model)
    ahead: int = 0  # drafted tokens in `cached` after the position being sampled

    def take(self, job: Job, sampler: llama_cpp.llama_sampler_p, prompt: list[int], reuse: int, use: int) -> None:
        """Start serving `job`, whose prompt's first `reuse` tokens this sequence's KV holds already; `use`: the
        admission counter's value (the least recently used sequence is the first reused for another prompt)."""
        self.cached = prompt[:reuse]
        self.pending = prompt[reuse:]
        self.job = job
        self.sampler = sampler
        self.grammar, job.grammar = job.grammar, None
        self.guard = None if self.grammar is None else StepGuard(job.request.grammar_step_limit_s)
        self.thinking = job.thinking
        self.shown = job.shown
        self.assembler = TextAssembler(job.request.stop)
        self.generated = 0
        self.logprobs = []
        self.unsent = ""
        self.next_token = None
        self.last_used = use


def discard(job: Job, release: Callable[[ImagePrompt], None] | None = None) -> None:
    """Free the grammar of a job that never reached a sequence, and (through `release`) its images."""
    if job.grammar is not None:
        llama_cpp.llama_sampler_free(job.grammar)
        job.grammar = None
    if job.images is not None:
        (release or ImagePrompt.close)(job.images)
        job.images = None
