"""Where a new request goes, and which cached prefix it reuses: pure decisions over the sequences' state.

A prefix held by any sequence (running or free) can be reused: the engine copies that sequence's KV stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# A prompt whose prefix another request is still prefilling waits for it if it would gain at least this much.
MIN_PREFIX_GAIN = 32
# A prefix is copied from another sequence if it saves at least this many tokens. The copy is of the whole KV stream
# (a memcpy of the sequence's n_ctx cells), which costs far less than prefilling a few tokens: SmolLM2 on 2 cores
# prefills at about 7 ms a token, and a chat template's default system prompt (28 tokens there) copied into an empty
# sequence took its 42-token prompt's prefill from about 320 ms to about 120-200 ms (docs/benchmarks.md). Below a
# few tokens (a template's opening tags) there is nothing worth a copy.
MIN_COPY_GAIN = 8
# A free sequence whose cached tokens beyond the prompt's are at most this many is taken before one that would lose
# more: a long cached prefix (a system prompt, one restored from disk) is not cut for a prompt that shares only the
# chat template's first tokens with it while an empty sequence is free.
SMALL_LOSS = 64


@dataclass(frozen=True)
class SlotView:
    cached: Sequence[int]  # tokens whose KV the sequence holds
    pending: Sequence[int] = ()  # prompt tokens it has yet to evaluate
    busy: bool = False
    last_used: int = 0


@dataclass(frozen=True)
class Placement:
    slot: int  # the free sequence that takes the request
    source: int  # the sequence whose cached prefix it shares (may be `slot` itself)
    reuse: int  # prompt tokens already in the KV cache once placed


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def place(prompt: Sequence[int], slots: Sequence[SlotView]) -> Placement | None:
    """The free sequence for a prompt and the best prefix to share, or None when every sequence is busy.

    At least the prompt's last token is always evaluated, since its logits are needed."""
    free = [i for i, s in enumerate(slots) if not s.busy]
    if not free:
        return None
    limit = len(prompt) - 1
    own = {i: min(common_prefix(slots[i].cached, prompt), limit) for i in free}
    # Prefer a free sequence that loses little of its cache, then the one that already holds the most of this
    # prompt; else the least recently used one, so that recent caches survive for the requests likely to come back.
    cheap = [i for i in free if len(slots[i].cached) - own[i] <= SMALL_LOSS]
    slot = max(cheap or free, key=lambda i: (own[i], -slots[i].last_used))
    source, reuse = slot, own[slot]
    for i, view in enumerate(slots):
        shared = min(common_prefix(view.cached, prompt), limit)
        if shared >= reuse + MIN_COPY_GAIN:
            source, reuse = i, shared
    return Placement(slot=slot, source=source, reuse=reuse)


def should_wait(prompt: Sequence[int], slots: Sequence[SlotView], available: int) -> bool:
    """True when a running request is prefilling a prefix of this prompt well beyond what is cached now."""
    for view in slots:
        if view.busy and view.pending:
            upcoming = min(common_prefix([*view.cached, *view.pending], prompt), len(prompt) - 1)
            if upcoming - available >= MIN_PREFIX_GAIN:
                return True
    return False
