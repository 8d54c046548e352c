"""Tool calls given out as they stream: a call once its name is read, then its arguments a piece at a time.

Each dialect says where its calls begin (`Dialect.first_call`, `next_call`: the text before a call, up to the "{"
of its arguments, with the function's name), anchored where the calls begin and where the call before ended, so
an object inside a call's arguments is never taken for a call. The arguments are read by `CanonicalJSON`, which
gives out only final text. A call is given out once its arguments read as JSON (their first key, or `{}`), so a
reply that is not JSON at all (single quotes) stays text as before. Nothing given out is ever taken back, so the
end of the reply settles the calls with what was already given:

- the reply parsed whole (`Dialect.parse`, as for a reply that is not streamed) holds the calls given out, in that
  order, with arguments that begin as given: the calls are finished from it, and any more it holds (after a call
  written in a form that cannot stream, the stream stops) follow them;
- otherwise the calls given out are the reply's calls, as given (a reply cut short by the token limit has the
  arguments written so far, as OpenAI's has).

A reply whose first call takes a form that cannot stream is read whole at its end, as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from server.generation.reply import ToolCall, ToolCallArguments, ToolCallStart, call_events
from server.generation.tool_dialects.base import CallFormat, Dialect
from server.generation.tool_dialects.json_canon import CanonicalJSON

logger = logging.getLogger(__name__)

LOOK_MAX = 1024  # characters that may come before a call's arguments (the dialects' patterns are bounded)

Event = ToolCallStart | ToolCallArguments


@dataclass
class StreamedCall:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)  # the pieces read
    complete: bool = False  # its arguments were read to their end

    @property
    def given(self) -> str:
        return "".join(self.arguments)


class CallPreview:
    """One choice's calls as they stream. Feed it the text of the reply from where its calls begin (`push`),
    then settle them with the reply parsed whole (`settle`)."""

    def __init__(self, dialect: Dialect, calls: CallFormat, choice: int) -> None:
        self._dialect = dialect
        self._calls = calls
        self._choice = choice
        self._tail = ""  # text not yet matched against where the next call begins (at most LOOK_MAX)
        self._reading: CanonicalJSON | None = None  # the arguments of the last call, while they stream
        self._closing: ObjectEnd | None = None  # the rest of the last call's object, after its arguments
        self._stopped = dialect.first_call is None  # nothing more is given out; the end settles the rest
        self._begun = False  # the last call was given out (its arguments read as JSON)
        self.streamed: list[StreamedCall] = []
        self.read_whole = False  # settled by the reply read whole (not only by what streamed)

    def push(self, text: str) -> list[Event]:
        events: list[Event] = []
        while text and not self._stopped:
            if self._reading is not None:
                text = self._arguments(text, events)
            elif self._closing is not None:
                text = self._close(text)
            else:
                text = self._header(text, events)
        return events

    def settle(self, whole: list[ToolCall] | None) -> list[Event] | None:
        """The events that finish the reply's calls, given the reply parsed whole (None: not calls); None when
        nothing was given out and the reply is not calls."""
        if self.streamed and not self._begun:  # the last call never read as JSON: it was not given out
            self.streamed.pop()
        if not self.streamed:
            self.read_whole = whole is not None
            return None if whole is None else [event for call in whole for event in call_events(self._choice, call)]
        streamed = self.streamed
        if whole is None or len(whole) < len(streamed) or not all(map(_begins, streamed, whole)):
            logger.warning("tool calls that began to stream could not be read whole: kept as they were given")
            return []
        self.read_whole = True
        rest = whole[len(streamed) : self._calls.most]
        suffix = whole[len(streamed) - 1].arguments[len(streamed[-1].given) :]
        events: list[Event] = [ToolCallArguments(self._choice, suffix)] if suffix else []
        for call in rest:
            events += call_events(self._choice, call)
        return events

    def _header(self, text: str, events: list[Event]) -> str:
        pattern = self._dialect.next_call if self.streamed else self._dialect.first_call
        assert pattern is not None
        looked = self._tail + text
        found = pattern.match(looked)
        if found is None:
            # Not a call's beginning (yet): wait for more unless no beginning could be this long.
            self._tail, self._stopped = looked, len(looked) >= LOOK_MAX
            return ""
        self._tail = ""
        name = found.group(found.lastindex or 0)
        if name not in self._calls.functions or len(self.streamed) >= self._calls.most:
            self._stopped = True  # the end decides: not a call of one of the functions, or one too many
            return ""
        self.streamed.append(StreamedCall(self._dialect.fresh_id(), name))
        self._reading, self._begun = CanonicalJSON(), False
        return looked[found.end() :]

    def _arguments(self, text: str, events: list[Event]) -> str:
        reading, call = self._reading, self.streamed[-1]
        assert reading is not None
        given, took = reading.push(text)
        if given:
            call.arguments.append(given)
        if not self._begun and reading.keyed:  # reads as JSON: given out from here on
            self._begun = True
            events.append(ToolCallStart(self._choice, call.id, call.name))
            given = call.given
        if self._begun and given:
            events.append(ToolCallArguments(self._choice, given))
        if reading.failed:
            self._stopped, self._reading = True, None
            return ""
        if reading.done:
            call.complete, self._reading = True, None
            self._closing = ObjectEnd() if self._dialect.call_is_object else None
            return text[took:]
        return ""

    def _close(self, text: str) -> str:
        assert self._closing is not None
        end = self._closing.push(text)
        if end is None:
            return ""
        self._closing = None
        return text[end:]


class ObjectEnd:
    """Finds where the JSON object a call's arguments sit in ends, from just after the arguments (strings and
    nested values skipped); linear in the text."""

    def __init__(self) -> None:
        self._depth = 1
        self._string = False
        self._escape = False

    def push(self, text: str) -> int | None:
        """Where in `text` the object ended (just after its "}"), or None while it has not."""
        for at, char in enumerate(text):
            if self._string:
                if self._escape:
                    self._escape = False
                elif char == "\\":
                    self._escape = True
                elif char == '"':
                    self._string = False
            elif char == '"':
                self._string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return at + 1
        return None


def _begins(call: StreamedCall, whole: ToolCall) -> bool:
    """The call read whole is the one streamed: only the last streamed call may be unfinished."""
    if call.name != whole.name:
        return False
    return whole.arguments == call.given if call.complete else whole.arguments.startswith(call.given)
