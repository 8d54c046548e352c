"""Where tool calls begin in a reply that streams: text before them is shown as it comes; from where calls may
begin, the text goes to the calls (given out as they stream by tool_dialects/preview.py, and read whole at the end),
so every delta a client gets is final: no text is ever taken back as a call."""

from __future__ import annotations

from server.generation.tool_dialects.base import Dialect

MAX_HELD = 256  # characters of a text reply held back at most, while they may come before calls


class CallSpotter:
    """One reply's text, split as it streams into what may be shown now and what may be calls. Calls begin at
    the dialect's opening (`<tool_call>`, `[TOOL_CALLS]` ...) wherever it comes, or, in a syntax whose calls are
    bare JSON, with a "{" at the very start of the reply. Work is linear in the reply's length."""

    def __init__(self, dialect: Dialect) -> None:
        self._opening = dialect.opening
        self._json = dialect.json_at_start
        # Text not shown yet, kept as pieces where it may grow without bound (blanks before anything else, the
        # calls), so each push costs the length of its own text; `_pending`: the short rest, looked at each time.
        self._pieces: list[str] = []
        self._pending = ""
        self._phase = "start"  # "start": nothing but blanks yet; "text": shown, watching for the opening; "calls"
        self._taken = 0  # of the pieces, once calls began: those `calls_text` gave already

    def push(self, text: str) -> str:
        """The reply's next text; returns the text that can be shown now."""
        if self._phase == "calls":
            self._pieces.append(text)
            return ""
        if self._phase == "start":
            if not self._pending:  # blanks so far: they wait as pieces
                begun = text.lstrip()
                self._pieces.append(text[: len(text) - len(begun)])
                text = begun
                if not text:
                    return ""
            self._pending += text  # what began, no longer than the opening while this phase lasts
            begun, opening = self._pending, self._opening or ""
            if (self._json and begun.startswith("{")) or (opening and begun.startswith(opening)):
                self._phase, self._pieces, self._pending = "calls", [*self._pieces, begun], ""
                return ""
            if opening and opening.startswith(begun):
                return ""
            self._phase, self._pending, self._pieces = "text", "".join(self._pieces) + begun, []
            return self._release()
        self._pending += text  # at most MAX_HELD held from before, and this text
        return self._release()

    def calls_text(self) -> str:
        """The text that went to the calls since the last time this was asked."""
        if self._phase != "calls":
            return ""
        new, self._taken = "".join(self._pieces[self._taken :]), len(self._pieces)
        return new

    def finish(self) -> tuple[str, str | None]:
        """At the reply's end: the text still to show, and the text to read as calls (None: none began)."""
        held = "".join(self._pieces) + self._pending
        self._pieces, self._pending = [], ""
        return ("", held) if self._phase == "calls" else (held, None)

    def _release(self) -> str:
        pending, opening = self._pending, self._opening
        if opening is None:
            cut = len(pending)
        else:
            at = pending.find(opening)
            if at >= 0:
                cut = len(pending[:at].rstrip())  # the blanks before the calls go with them
                self._phase, self._pieces, self._pending = "calls", [pending[cut:]], ""
                return pending[:cut]
            else:  # a tail that may begin the opening waits, and blanks before it (they go with calls if any)
                cut = len(pending[: len(pending) - _partial(pending, opening)].rstrip())
                cut = max(cut, len(pending) - MAX_HELD)  # a long run of blanks is shown, not held
        shown, self._pending = pending[:cut], pending[cut:]
        return shown


def _partial(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a proper beginning of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
