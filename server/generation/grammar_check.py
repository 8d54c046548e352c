"""A client's own GBNF grammar, read the way llama.cpp's grammar parser reads it, and checked before it gets there.

The syntax is llama.cpp's: rules `name ::= alternatives`, each ending at a newline (inside a group or after a `|`
newlines are spaces); names of ASCII letters, digits and `-`; string literals and character classes with the
escapes `\\x.. \\u.... \\U........ \\t \\r \\n \\\\ \\" \\[ \\] \\-`; token references `<...>`, `<[id]>`
and their negation `!`; groups; `.`; the repetitions `* + ? {m} {m,} {m,n}`; `#` comments.

Why the bounds: llama.cpp parses groups recursively (a deep enough nesting overflows its stack), copies a repeated
item once per count, reads a maximum above 2000 as "no maximum" without a word, and reads a maximum below the
minimum as a count near 2^64. So groups nest at most `max_depth` deep, each count is at most `max_repeat` and all of
them together at most `max_repeat_total`, what the repetitions expand to is at most `max_copies` grammar elements,
and a repetition of a repetition (whose copies multiply) is refused. A syntax error, a rule used but never defined
or a missing `root` is a 400 that says where; whatever llama.cpp still refuses (left recursion) is a 400 when the
grammar is compiled, before admission. llama.cpp also keeps a parse stack per way the output so far can be
parsed, with no cap: a rule's ways to begin and the ways the root can be parsed at once are bounded too
(server/generation/grammar_ways.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from server.errors import InvalidRequestError
from server.generation.grammar_reader import GrammarReadError
from server.generation.grammar_ways import grammar_ways

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_DIGITS = frozenset("0123456789")
_MAX_NUMBER_DIGITS = 10
# Read with regular expressions (each linear: its alternatives begin differently), not a character at a time.
_SPACE = re.compile(r"(?:[ \t]+|#[^\r\n]*)*")
_SPACE_OR_NEWLINE = re.compile(r"(?:[ \t\r\n]+|#[^\r\n]*)*")
_NAME = re.compile(r"[a-zA-Z0-9-]+")
_NUMBER = re.compile(r"[0-9]+")
_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_CLASS = re.compile(r"\[\^?((?:[^\]\\]|\\.)*)\]", re.DOTALL)
# A literal's or a class's characters: runs of plain ones, llama.cpp's escapes, or (group 1) an escape it refuses.
_CHARS = re.compile(r'[^\\]+|\\(?:[trn\\"\[\]-]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})|(\\.?)', re.DOTALL)


@dataclass(frozen=True)
class GrammarBounds:
    """What one client grammar may ask of llama.cpp (README: Structured output)."""

    max_bytes: int = 64 * 1024  # the grammar as UTF-8
    max_depth: int = 32  # groups nested in groups
    max_alternatives: int = 128  # in one rule or group
    max_repeat: int = 1_000  # one count of a {m,n}
    max_repeat_total: int = 10_000  # all {m,n} counts together
    max_copies: int = 200_000  # grammar elements the repetitions expand to (an item's length times its count)
    max_begin_ways: int = 4_096  # parse stacks one rule opens as it begins (llama.cpp builds them all at once)
    max_ways: int = 10_000  # parse stacks the root can keep at once (recursive rules aside)


BOUNDS = GrammarBounds()


class GrammarError(ValueError):
    pass


def check_grammar(text: str, where: str, bounds: GrammarBounds = BOUNDS) -> None:
    """Refuse, with a 400 naming `where`, a grammar llama.cpp would refuse for its syntax, or that is past a bound."""
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        raise InvalidRequestError(f"The grammar at '{where}' holds a lone surrogate.", param=where) from None
    if size > bounds.max_bytes:
        raise InvalidRequestError(
            f"The grammar at '{where}' is larger than this server accepts ({bounds.max_bytes} bytes).", param=where
        )
    try:
        _Reader(text, bounds).grammar()
        check_ways(text, bounds)
    except GrammarError as exc:
        raise InvalidRequestError(f"The grammar at '{where}' is not accepted: {exc}.", param=where) from None


def check_ways(text: str, bounds: GrammarBounds = BOUNDS) -> None:
    """Refuse a grammar llama.cpp would keep too many parse stacks for (its syntax already checked)."""
    try:
        ways = grammar_ways(text, limit=bounds.max_ways)
    except GrammarReadError as exc:  # a reading llama.cpp's parser and ours disagree on: not risked
        raise GrammarError(f"it could not be read ({exc})") from None
    if ways.begin > bounds.max_begin_ways:
        raise GrammarError(
            f"the rule {_name(ways.begin_rule)} can begin in {_count(ways.begin)} ways and llama.cpp keeps a parse "
            f"stack for each (at most {bounds.max_begin_ways} are accepted); make its alternatives begin "
            "differently, or share what they begin with"
        )
    if ways.at_once > bounds.max_ways:
        raise GrammarError(
            f"it can be parsed in about {_count(ways.at_once)} ways at once (from the rule {_name(ways.at_once_rule)}) "
            f"and llama.cpp keeps a parse stack for each (at most {bounds.max_ways} are accepted): bounded "
            "repetitions of parts of varying length multiply; use * or + for long ones, or make the parts "
            "unambiguous"
        )


def _count(ways: int) -> str:
    return f"{ways}" if ways < 10**9 else "more than 10^9"


def _name(rule: str) -> str:
    return repr(rule if len(rule) <= 40 else rule[:37] + "...")


class _Reader:
    def __init__(self, text: str, bounds: GrammarBounds) -> None:
        self.text = text
        self.pos = 0
        self.bounds = bounds
        self.defined: set[str] = set()
        self.used: dict[str, int] = {}  # rule name -> where it is first used
        self.counts = 0
        self.copies = 0

    # -- reading ----------------------------------------------------------------------------------------
    def peek(self, ahead: int = 0) -> str:
        at = self.pos + ahead
        return self.text[at] if at < len(self.text) else ""

    def error(self, what: str, at: int | None = None) -> GrammarError:
        at = self.pos if at is None else at
        line = self.text.count("\n", 0, at) + 1
        column = at - (self.text.rfind("\n", 0, at) + 1) + 1
        return GrammarError(f"{what} (line {line}, column {column})")

    def space(self, *, newlines: bool) -> None:
        self.pos = (_SPACE_OR_NEWLINE if newlines else _SPACE).match(self.text, self.pos).end()  # type: ignore[union-attr]

    # -- rules ------------------------------------------------------------------------------------------
    def grammar(self) -> None:
        if "\x00" in self.text:
            raise self.error("it holds a NUL character", self.text.index("\x00"))
        self.space(newlines=True)
        while self.pos < len(self.text):
            self.rule()
        for name, at in self.used.items():
            if name not in self.defined:
                raise self.error(f"the rule {name!r} is used but never defined", at)
        if "root" not in self.defined:
            raise GrammarError("it defines no `root` rule, where the output starts")

    def rule(self) -> None:
        self.defined.add(self.name())
        self.space(newlines=False)
        if not self.text.startswith("::=", self.pos):
            raise self.error("expected '::=' after the rule's name")
        self.pos += 3
        self.space(newlines=True)
        self.alternatives(depth=0)
        if self.text.startswith("\r\n", self.pos):
            self.pos += 2
        elif self.peek() in ("\r", "\n"):
            self.pos += 1
        elif self.peek():
            raise self.error(f"unexpected {self.peek()!r}")
        self.space(newlines=True)

    def name(self) -> str:
        found = _NAME.match(self.text, self.pos)
        if found is None:
            raise self.error("expected a rule name (letters, digits and '-')")
        self.pos = found.end()
        return found.group()

    def alternatives(self, depth: int) -> None:
        count = 1
        self.sequence(depth)
        while self.peek() == "|":
            count += 1
            if count > self.bounds.max_alternatives:
                raise self.error(f"more than {self.bounds.max_alternatives} alternatives in one rule or group")
            self.pos += 1
            self.space(newlines=True)
            self.sequence(depth)

    def sequence(self, depth: int) -> None:
        """Items one after another. `item` is the number of grammar elements of the last one (what a repetition
        copies), None when there is nothing to repeat."""
        nested = depth > 0
        item: int | None = None
        repeated = False
        while True:
            ch, start = self.peek(), self.pos
            if ch == '"':
                item = self.literal() or None
            elif ch == "[":
                item = self.char_class() or None
            elif ch in ("<", "!"):
                self.token()
                item = 1
            elif ch in _NAME_CHARS:
                self.used.setdefault(self.name(), start)
                item = 1
            elif ch == "(":
                if depth >= self.bounds.max_depth:
                    raise self.error(f"groups nest deeper than {self.bounds.max_depth} levels")
                self.pos += 1
                self.space(newlines=True)
                self.alternatives(depth + 1)
                if self.peek() != ")":
                    raise self.error("expected ')' to close the group")
                self.pos += 1
                item = 1
            elif ch == ".":
                self.pos += 1
                item = 1
            elif ch in ("*", "+", "?", "{"):
                low, high = self.repetition(newlines=nested)
                self.repeat(item, repeated, low, high, start)
                repeated = True
                self.space(newlines=nested)
                continue
            else:
                return
            repeated = False
            self.space(newlines=nested)

    # -- items ------------------------------------------------------------------------------------------
    def literal(self) -> int:
        return self.chars(_LITERAL, "a string is not closed")

    def char_class(self) -> int:
        return self.chars(_CLASS, "a character class is not closed")  # a range's ends count as one each

    def chars(self, pattern: re.Pattern[str], unclosed: str) -> int:
        """Read a literal or a class; the number of characters in it."""
        found = pattern.match(self.text, self.pos)
        if found is None:
            raise self.error(unclosed)
        count = 0
        for piece in _CHARS.finditer(found.group(1)):
            if piece.group(1) is not None:
                where = found.start(1) + piece.start()
                raise self.error(f"unknown escape {piece.group(1)} (or too few hexadecimal digits)", where)
            count += len(piece.group()) if piece.group()[0] != "\\" else 1
        self.pos = found.end()
        return count

    def token(self) -> None:
        start = self.pos
        if self.peek() == "!":
            self.pos += 1
        if self.peek() != "<":
            raise self.error("expected '<' after '!'")
        end = self.text.find(">", self.pos)
        if end < 0:
            raise self.error("a token is not closed with '>'", start)
        body = self.text[self.pos + 1 : end]
        if body.startswith("[") and not (
            body.endswith("]") and 0 < len(body) - 2 <= _MAX_NUMBER_DIGITS and all(c in _DIGITS for c in body[1:-1])
        ):
            raise self.error("a token id is written <[digits]>", start)
        self.pos = end + 1

    # -- repetitions ------------------------------------------------------------------------------------
    def repetition(self, *, newlines: bool) -> tuple[int, int | None]:
        ch = self.peek()
        self.pos += 1
        if ch != "{":
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[ch]
        self.space(newlines=newlines)
        low = self.number()
        self.space(newlines=newlines)
        high: int | None = low
        if self.peek() == ",":
            self.pos += 1
            self.space(newlines=newlines)
            high = self.number() if self.peek() in _DIGITS else None
            self.space(newlines=newlines)
        if self.peek() != "}":
            raise self.error("expected '}' to close the repetition")
        self.pos += 1
        return low, high

    def number(self) -> int:
        start = self.pos
        found = _NUMBER.match(self.text, self.pos)
        if found is None:
            raise self.error("expected a number")
        digits, self.pos = found.group(), found.end()
        if len(digits) > _MAX_NUMBER_DIGITS:
            raise self.error(f"the repetition count {digits[:12]}... is too large", start)
        return int(digits)

    def repeat(self, item: int | None, repeated: bool, low: int, high: int | None, at: int) -> None:
        bounds = self.bounds
        if item is None:
            raise self.error("nothing to repeat", at)
        if repeated:
            raise self.error("a repetition cannot be repeated directly; put it in a group first", at)
        for count in (low, high):
            if count is not None and count > bounds.max_repeat:
                raise self.error(f"a repetition count is {count}; at most {bounds.max_repeat} is accepted", at)
        if high is not None and high < low:
            raise self.error(f"the repetition {{{low},{high}}} is reversed", at)
        if self.text[at] == "{":
            self.counts += low + (high or 0)
            if self.counts > bounds.max_repeat_total:
                raise self.error(f"the repetition counts add up to more than {bounds.max_repeat_total}", at)
        # llama.cpp writes the item out `low` times, then once more per optional count (plus a rule reference).
        self.copies += (item + 1) * max(low, high or 0, 1)
        if self.copies > bounds.max_copies:
            raise self.error(
                f"the repetitions expand to more than {bounds.max_copies} grammar elements (each repeated string "
                "or class counts its length per repetition); repeat a rule instead",
                at,
            )
