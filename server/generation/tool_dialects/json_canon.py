"""One JSON value read as it streams and written back as `json.dumps` writes it (", " and ": " between items,
ASCII with escapes), a piece at a time: each piece given out is final, so a client that joins them never sees an
escape cut in two, and the joined text equals `json.dumps(json.loads(text, strict=False))` for a value without
repeated keys. Like that reading, it takes raw control characters (a newline) inside strings, which small models
write in code and file contents: they are given out escaped."""

from __future__ import annotations

import json
import math
import re

MAX_DEPTH = 256  # nesting past this ends the value as not JSON (Python's own parser gives up near 1,000)
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NUMBER_CHARS = frozenset("0123456789+-.eE")
_PLAIN_RUN = re.compile(r'[^"\\]+')  # string characters other than an escape or the end (raw controls too)
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_LITERALS = ("true", "false", "null")
_BLANKS = " \t\r\n"
_MAX_INT_DIGITS = 4300  # Python's own limit on converting digits to an int


class CanonicalJSON:
    """Feed it text with `push` until `done` (the value ended: the rest of the text is not part of it) or `failed`
    (the text stopped being JSON: what was given out stays, nothing more comes)."""

    def __init__(self) -> None:
        self._stack: list[str] = []  # "{" or "[" for each open container
        self._expect = "value"  # value, first-member, key, colon, first-item, after-value
        self._string: str | None = None  # "key" or "value" while inside a string
        self._escape: str | None = None  # the escape read so far (after the backslash), while inside one
        self._token = ""  # a number or literal being read
        self.keyed = False  # an object's first member has its key, or the value ended: it reads as JSON so far
        self.done = False
        self.failed = False

    def push(self, text: str) -> tuple[str, int]:
        """The canonical text that is final after `text`, and how many characters of `text` the value took."""
        out: list[str] = []
        at = 0
        while at < len(text) and not (self.done or self.failed):
            at = self._step(text, at, out)
        return "".join(out), at

    def _step(self, text: str, at: int, out: list[str]) -> int:
        if self._string is not None:
            return self._in_string(text, at, out)
        char = text[at]
        if self._token:
            if char in _NUMBER_CHARS or (self._token[0] in "tfn" and char.isalpha()):
                self._token += char
                if len(self._token) > _MAX_INT_DIGITS + 16:
                    self.failed = True
                return at + 1
            self._end_token(out)
            return at
        if char in _BLANKS:
            return at + 1
        expect = self._expect
        if expect in ("value", "first-item") and not (expect == "first-item" and char == "]"):
            return self._value(char, at, out)
        if expect in ("first-member", "key") and char == '"':
            self._string, self._expect = "key", "colon"
            out.append('"')
        elif expect == "colon" and char == ":":
            out.append(": ")
            self._expect, self.keyed = "value", True
        elif expect == "after-value" and char == ",":
            out.append(", ")
            self._expect = "key" if self._stack[-1] == "{" else "value"
        elif (char == "}" and expect in ("first-member", "after-value") and self._stack[-1] == "{") or (
            char == "]" and expect in ("first-item", "after-value") and self._stack[-1] == "["
        ):
            out.append(char)
            self._stack.pop()
            self._after_value()
        else:
            self.failed = True
        return at + 1

    def _value(self, char: str, at: int, out: list[str]) -> int:
        if char in "{[":
            if len(self._stack) >= MAX_DEPTH:
                self.failed = True
                return at
            self._stack.append(char)
            self._expect = "first-member" if char == "{" else "first-item"
            out.append(char)
        elif char == '"':
            self._string = "value"
            out.append('"')
        elif char == "-" or char.isdigit() or char in "tfn":
            self._token = char
        else:
            self.failed = True
        return at + 1

    def _end_token(self, out: list[str]) -> None:
        token, self._token = self._token, ""
        if token in _LITERALS:
            out.append(token)
        elif _NUMBER.fullmatch(token):
            if "." in token or "e" in token or "E" in token:
                number = float(token)
                if not math.isfinite(number):  # 1e400: no JSON text stands for what Python reads it as
                    self.failed = True
                    return
                out.append(json.dumps(number))
            elif len(token.lstrip("-")) > _MAX_INT_DIGITS:
                self.failed = True
                return
            else:
                out.append(str(int(token)))
        else:
            self.failed = True
            return
        self._after_value()

    def _after_value(self) -> None:
        if self._stack:
            self._expect = "after-value"
        else:
            self.done = self.keyed = True

    def _in_string(self, text: str, at: int, out: list[str]) -> int:
        if self._escape is not None:
            return self._in_escape(text, at, out)
        run = _PLAIN_RUN.match(text, at)
        if run is not None:
            out.append(json.dumps(run.group())[1:-1])
            return run.end()
        if text[at] == "\\":
            self._escape = ""
        else:
            out.append('"')
            if self._string == "value":
                self._after_value()
            self._string = None
        return at + 1

    def _in_escape(self, text: str, at: int, out: list[str]) -> int:
        escape = self._escape + text[at]
        if escape in _ESCAPES:
            out.append(json.dumps(_ESCAPES[escape])[1:-1])
        elif escape[0] == "u" and len(escape) <= 5 and all(c in "0123456789abcdefABCDEF" for c in escape[1:]):
            if len(escape) < 5:
                self._escape = escape
                return at + 1
            out.append(json.dumps(chr(int(escape[1:], 16)))[1:-1])  # a surrogate half stays an escape
        else:
            self.failed = True
            return at + 1
        self._escape = None
        return at + 1
