"""A GBNF grammar as data, read the way llama.cpp's parser reads it, for counting its parse stacks
(server/generation/grammar_ways.py). Its syntax is checked before (server/generation/grammar_check.py, or built by
this server); anything else is a GrammarReadError.

A rule is a list of alternatives, an alternative a list of items, an item (atom, low, high): the atom is a
Terminal, a rule's name, or a group (a nested list of alternatives), repeated `low` to `high` times (None: no
maximum; an item that is not repeated is (atom, 1, 1)).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPACE = re.compile(r"(?:[ \t]+|#[^\r\n]*)*")
_SPACE_OR_NEWLINE = re.compile(r"(?:[ \t\r\n]+|#[^\r\n]*)*")
_NAME = re.compile(r"[a-zA-Z0-9-]+")
_NUMBER = re.compile(r"[0-9]+")
_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_CLASS = re.compile(r"\[(\^?)((?:[^\]\\]|\\.)*)\]", re.DOTALL)
_TOKEN = re.compile(r"!?<[^>]*>")
_CHAR = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)|.", re.DOTALL)
_ESCAPED = {"t": "\t", "r": "\r", "n": "\n"}
MAX_FIRST_CHARS = 4_096  # a larger set of first characters is kept as "any"


@dataclass(frozen=True)
class Terminal:
    length: int | None  # characters it matches (None: a token, whose text varies)
    first: frozenset[int] | None  # the characters it can begin with (None: any)


Alternatives = list[list[tuple["Terminal | str | Alternatives", int, "int | None"]]]
Item = tuple["Terminal | str | Alternatives", int, "int | None"]
ANY_CHAR = Terminal(1, None)
TOKEN = Terminal(None, None)


class GrammarReadError(ValueError):
    pass


def read_grammar(text: str) -> dict[str, Alternatives]:
    """The rules of a grammar by name (a rule defined twice is its last definition, as in llama.cpp)."""
    return _Reader(text).grammar()


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def grammar(self) -> dict[str, Alternatives]:
        rules: dict[str, Alternatives] = {}
        self.skip(_SPACE_OR_NEWLINE)
        while self.pos < len(self.text):
            name = self.match(_NAME).group()
            self.skip(_SPACE)
            if not self.text.startswith("::=", self.pos):
                raise GrammarReadError(f"expected ::= at {self.pos}")
            self.pos += 3
            self.skip(_SPACE_OR_NEWLINE)
            rules[name] = self.alternatives(nested=False)
            self.skip(_SPACE_OR_NEWLINE)
        return rules

    def skip(self, pattern: re.Pattern[str]) -> None:
        self.pos = pattern.match(self.text, self.pos).end()  # type: ignore[union-attr]

    def match(self, pattern: re.Pattern[str]) -> re.Match[str]:
        found = pattern.match(self.text, self.pos)
        if found is None:
            raise GrammarReadError(f"unexpected {self.text[self.pos : self.pos + 1]!r} at {self.pos}")
        self.pos = found.end()
        return found

    def alternatives(self, *, nested: bool) -> Alternatives:
        options = [self.sequence(nested)]
        while self.text.startswith("|", self.pos):
            self.pos += 1
            self.skip(_SPACE_OR_NEWLINE)
            options.append(self.sequence(nested))
        return options

    def sequence(self, nested: bool) -> list[Item]:
        items: list[Item] = []
        space = _SPACE_OR_NEWLINE if nested else _SPACE  # outside a group, a newline ends the rule
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            atom: Terminal | str | Alternatives
            if ch == '"':
                atom = _literal(self.match(_LITERAL).group(1))
            elif ch == "[":
                found = self.match(_CLASS)
                atom = ANY_CHAR if found.group(1) else Terminal(1, _class_chars(found.group(2)))
            elif ch in "<!":
                self.match(_TOKEN)
                atom = TOKEN
            elif ch == ".":
                self.pos += 1
                atom = ANY_CHAR
            elif ch == "(":
                self.pos += 1
                self.skip(_SPACE_OR_NEWLINE)
                atom = self.alternatives(nested=True)
                if not self.text.startswith(")", self.pos):
                    raise GrammarReadError(f"expected ) at {self.pos}")
                self.pos += 1
            elif _NAME.match(ch):
                atom = self.match(_NAME).group()
            elif ch in "*+?{" and items:
                items[-1] = (items[-1][0], *self.repetition(space))
                self.skip(space)
                continue
            else:
                break
            items.append((atom, 1, 1))
            self.skip(space)
        return items

    def repetition(self, space: re.Pattern[str]) -> tuple[int, int | None]:
        ch = self.text[self.pos]
        self.pos += 1
        if ch != "{":
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[ch]
        self.skip(space)
        low = int(self.match(_NUMBER).group())
        self.skip(space)
        high: int | None = low
        if self.text.startswith(",", self.pos):
            self.pos += 1
            self.skip(space)
            high = int(self.match(_NUMBER).group()) if _NUMBER.match(self.text, self.pos) else None
            self.skip(space)
        if not self.text.startswith("}", self.pos):
            raise GrammarReadError(f"expected }} at {self.pos}")
        self.pos += 1
        return low, high


def _chars(body: str) -> list[int]:
    out = []
    for found in _CHAR.finditer(body):
        code = found.group(1)
        if code is None:
            out.append(ord(found.group()))
        elif len(code) > 1:
            out.append(int(code[1:], 16))
        else:
            out.append(ord(_ESCAPED.get(code, code)))
    return out


def _literal(body: str) -> Terminal:
    chars = _chars(body)
    return Terminal(len(chars), frozenset(chars[:1]))


def _class_chars(body: str) -> frozenset[int] | None:
    """The characters of a (not negated) class, None when there are too many to list."""
    chars = _chars(body)
    out: set[int] = set()
    i = 0
    while i < len(chars):
        low = high = chars[i]
        # A '-' between two characters is a range (an escaped \\- reads as the same code point: close enough
        # for a count that only groups alternatives by how they begin).
        if i + 2 < len(chars) and chars[i + 1] == ord("-"):
            high = chars[i + 2]
            i += 3
        else:
            i += 1
        if high - low + len(out) > MAX_FIRST_CHARS:
            return None
        out.update(range(low, high + 1))
    return frozenset(out)
