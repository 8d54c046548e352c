"""Incremental detokenization with stop strings: a small pure state machine, tested on its own."""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TextStep:
    text: str
    """Text that is final: it can no longer become part of a stop string."""
    stopped: bool = False
    """A stop string was found; `text` ends right before it and nothing more may be emitted."""
    stop: str | None = None
    """Which stop string, when one was found."""


class TextAssembler:
    """Turns token pieces (bytes) into text deltas.

    A UTF-8 character split across tokens is held back until it is complete, and so is any tail that
    could still be the start of a stop string; a stop string that spans several tokens is found.
    """

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._stops = tuple(s for s in stops if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._stopped = False

    def push(self, piece: bytes) -> TextStep:
        if self._stopped:
            return TextStep("", stopped=True)
        self._pending += self._decoder.decode(piece)
        return self._release()

    def finish(self) -> str:
        """Everything still held back, once generation has ended without a stop string."""
        if self._stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        step = self._release(final=True)
        return step.text

    def _release(self, final: bool = False) -> TextStep:
        found = self._first_stop()
        if found is not None:
            cut, stop = found
            text, self._pending, self._stopped = self._pending[:cut], "", True
            return TextStep(text, stopped=True, stop=stop)
        keep = 0 if final else self._partial_stop_len()
        split = len(self._pending) - keep
        text, self._pending = self._pending[:split], self._pending[split:]
        return TextStep(text)

    def _first_stop(self) -> tuple[int, str] | None:
        found = [(i, s) for s, i in ((s, self._pending.find(s)) for s in self._stops) if i >= 0]
        return min(found) if found else None

    def _partial_stop_len(self) -> int:
        """Length of the longest tail of the pending text that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:n]):
                    best = n
                    break
        return best
