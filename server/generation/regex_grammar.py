"""Regular expressions as GBNF: a JSON Schema `pattern` (anchored) for the text between a string's quotes, or a
whole output (`text_rule`, for a request's regex constraint).

The subset: literals and escapes, `.`, classes (`[a-z]`, `[^...]`, `\\d \\w \\s` and their negations, ASCII), groups
(`(...)`, `(?:...)`), alternation, and the quantifiers `* + ? {m} {m,} {m,n}` (lazy forms read as greedy). Each
`{m,n}` is at most the repeat bound, all of a pattern's counts together at most ten times it, and groups nest at
most MAX_GROUP_DEPTH deep, so its grammar stays small. Lookarounds, backreferences and inner anchors are refused.
And its ways to be parsed at once (server/generation/grammar_ways.py: alternatives add up, a bounded repetition of a
part of varying length multiplies, as in `((a|aa){1,9}){1,9}`) are at most the ways bound: llama.cpp keeps a parse
stack for each, and a token costs a pass per stack.
In a JSON string, characters JSON must escape (`"`, `\\`, control characters) are written escaped for literals and
`\\s`, and left out of classes and `.`; in a whole output, characters are written as they are (`.` leaves out only
a newline). Neither produces surrogates or code points past U+10FFFF.
"""

from __future__ import annotations

from collections.abc import Callable

from server.generation.grammar_rules import gbnf_escape, gbnf_literal, repeat
from server.generation.grammar_ways import expression_ways
from server.generation.schema_keywords import BOUNDS

# Inside a GBNF class: what a class never produces in a JSON string (see the `char` rule in grammar_rules).
JSON_UNSAFE = '"\\\\\\x00-\\x1F\\x7F\\uD800-\\uDFFF\\U00110000-\\U7FFFFFFF'
# ... and in any text: no surrogates or code points past U+10FFFF.
TEXT_UNSAFE = "\\uD800-\\uDFFF\\U00110000-\\U7FFFFFFF"
TEXT_SPACE = "[ \\t\\n\\r\\x0B\\x0C]"  # \\s in ASCII (GBNF has no \\f or \\v escape)
MAX_GROUP_DEPTH = 32  # the parser recurses once per level: nesting stays far from Python's recursion limit
_CLASS_ESCAPES = {"d": "0-9", "w": "a-zA-Z0-9_"}
_JSON_ESCAPED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\f": "\\f", "\b": "\\b"}
# Code points a positive class never produces: those a JSON string must escape, or none in any text.
_JSON_EXCLUDED = ((0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F))
_TEXT_EXCLUDED = ((0xD800, 0xDFFF),)


class PatternError(ValueError):
    pass


def pattern_rule(
    pattern: str, add: Callable[[str, str], str], max_repeat: int, max_ways: int = BOUNDS.max_pattern_ways
) -> str:
    """A GBNF expression for the JSON-escaped text matching `pattern`, which must be anchored with ^ and $."""
    if not (pattern.startswith("^") and pattern.endswith("$")) or pattern.endswith("\\$"):
        raise PatternError("it must be anchored with ^ and $")
    return _bounded(pattern[1:-1], add, max_repeat, max_ways, json_string=True)


def text_rule(
    regex: str, add: Callable[[str, str], str], max_repeat: int, max_ways: int = BOUNDS.max_pattern_ways
) -> str:
    """A GBNF expression for a whole text matching `regex` (a leading ^ and a trailing $ are optional)."""
    body = regex[1:] if regex.startswith("^") else regex
    backslashes = len(body[:-1]) - len(body[:-1].rstrip("\\"))
    if body.endswith("$") and backslashes % 2 == 0:  # an anchor, not an escaped \\$
        body = body[:-1]
    return _bounded(body, add, max_repeat, max_ways, json_string=False)


def _bounded(text: str, add: Callable[[str, str], str], max_repeat: int, max_ways: int, *, json_string: bool) -> str:
    """The expression, once its ways to be parsed at once are within `max_ways`."""
    own: dict[str, str] = {}

    def add_own(hint: str, body: str) -> str:
        name = add(hint, body)
        own[name] = body
        return name

    expression = _Parser(text, add_own, max_repeat, json_string=json_string).whole()
    ways = expression_ways(expression, own)
    if ways > max_ways:
        raise PatternError(
            f"it can be parsed in about {ways if ways < 10**9 else 'more than 10^9'} ways at once and llama.cpp "
            f"keeps a parse stack for each (at most {max_ways} are accepted): bounded repetitions of parts of "
            "varying length multiply, as in ((a|aa){1,9}){1,9}; use * or + for long ones, or make the parts "
            "unambiguous"
        )
    return expression


class _Parser:
    def __init__(self, text: str, add: Callable[[str, str], str], max_repeat: int, *, json_string: bool) -> None:
        self.text = text
        self.pos = 0
        self.add = add
        self.max_repeat = max_repeat
        self.budget = 10 * max_repeat  # all counts of the pattern together
        self.depth = 0
        self.json = json_string
        self.unsafe = JSON_UNSAFE if json_string else TEXT_UNSAFE  # left out of every negated class

    def whole(self) -> str:
        expression, _ = self.alternation()
        if self.pos != len(self.text):
            raise PatternError(f"unexpected {self.text[self.pos]!r} at {self.pos + 1}")
        return f"({expression})" if expression else '""'

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        ch = self.peek()
        if not ch:
            raise PatternError("it ends too early")
        self.pos += 1
        return ch

    def alternation(self) -> tuple[str, bool]:
        """(GBNF, whether it can match the empty string)."""
        options = [self.sequence()]
        while self.peek() == "|":
            self.pos += 1
            options.append(self.sequence())
        if len(options) == 1:
            return options[0]
        return " | ".join(o or '""' for o, _ in options), any(empty for _, empty in options)

    def sequence(self) -> tuple[str, bool]:
        parts, empty = [], True
        while self.peek() not in ("", "|", ")"):
            atom, atom_empty = self.atom()
            atom, atom_empty = self.quantified(atom, atom_empty)
            parts.append(atom)
            empty = empty and atom_empty
        return " ".join(p for p in parts if p), empty

    def atom(self) -> tuple[str, bool]:
        ch = self.take()
        if ch == "(":
            if self.text.startswith("?:", self.pos):
                self.pos += 2
            elif self.peek() == "?":
                raise PatternError("lookarounds and named groups are not supported")
            self.depth += 1
            if self.depth > MAX_GROUP_DEPTH:
                raise PatternError(f"its groups nest deeper than {MAX_GROUP_DEPTH} levels")
            inner, empty = self.alternation()
            self.depth -= 1
            if self.take() != ")":
                raise PatternError("a group is not closed")
            return self.add("pattern-group", inner or '""'), empty
        if ch == "[":
            return self.char_class(), False
        if ch == ".":
            return (f"[^{JSON_UNSAFE}]" if self.json else f"[^\\n{TEXT_UNSAFE}]"), False
        if ch in "^$":
            raise PatternError("anchors are only supported at the start and the end")
        if ch in "*+?{":
            raise PatternError(f"nothing to repeat before {ch!r}")
        if ch == "\\":
            return self.escape(), False
        return self.literal(ch), False

    def literal(self, ch: str) -> str:
        return _json_literal(ch) if self.json else gbnf_literal(ch)

    def escape(self) -> str:
        ch = self.take()
        if ch in _CLASS_ESCAPES:
            return f"[{_CLASS_ESCAPES[ch]}]"
        if ch in "DW":
            return f"[^{_CLASS_ESCAPES[ch.lower()]}{self.unsafe}]"
        if ch == "s":
            return '([ ] | "\\\\t" | "\\\\n" | "\\\\r" | "\\\\f")' if self.json else TEXT_SPACE
        if ch == "S":
            return f"[^ {JSON_UNSAFE}]" if self.json else f"[^{TEXT_SPACE[1:-1]}{TEXT_UNSAFE}]"
        return self.literal(self.escaped_char(ch))

    def escaped_char(self, code: str) -> str:
        """The character an escape other than a class stands for: \\n \\t \\r \\f, \\uXXXX, \\xXX, or punctuation."""
        if code in "ux":
            digits = self.text[self.pos : self.pos + (4 if code == "u" else 2)]
            if len(digits) != (4 if code == "u" else 2) or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise PatternError(f"\\{code} needs {'4' if code == 'u' else '2'} hexadecimal digits")
            self.pos += len(digits)
            if 0xD800 <= int(digits, 16) <= 0xDFFF:
                raise PatternError(f"\\{code}{digits} is a surrogate, which no text holds")
            return chr(int(digits, 16))
        if code in "ntrf":
            return {"n": "\n", "t": "\t", "r": "\r", "f": "\f"}[code]
        if code.isalnum():  # \b, \1, \p{...}, \v ...: not read as the bare letter
            raise PatternError(f"the escape \\{code} is not supported")
        return code

    def char_class(self) -> str:
        negated = self.peek() == "^"
        if negated:
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while first or self.peek() != "]":
            first = False
            low = self.class_member()
            if isinstance(low, list):
                ranges += low
                continue
            if self.peek() == "-" and self.text[self.pos + 1 : self.pos + 2] not in ("]", ""):
                self.pos += 1
                high = self.class_member()
                if isinstance(high, list) or high < low:
                    raise PatternError("a class range is reversed or not a range of characters")
                ranges.append((low, high))
            else:
                ranges.append((low, low))
        self.pos += 1  # the closing ]
        if negated:
            return f"[^{''.join(_class_range(r) for r in ranges)}{self.unsafe}]"
        # A positive class never produces what JSON must escape (or, in any text, a surrogate): those characters
        # are cut out of its ranges.
        excluded = _JSON_EXCLUDED if self.json else _TEXT_EXCLUDED
        safe = [piece for r in ranges for piece in _cut(r, excluded)]
        if not safe:
            what = "a JSON string must escape" if self.json else "no text holds"
            raise PatternError(f"a class holds only characters {what}")
        return f"[{''.join(_class_range(r) for r in safe)}]"

    def class_member(self) -> int | list[tuple[int, int]]:
        ch = self.take()
        if ch != "\\":
            return ord(ch)
        code = self.take()
        if code == "d":
            return [(0x30, 0x39)]
        if code == "w":
            return [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
        if code == "s" and not self.json:
            return [(0x09, 0x0D), (0x20, 0x20)]
        if code in "DWSs":
            raise PatternError(f"\\{code} inside a class is not supported")
        return ord(self.escaped_char(code))

    def quantified(self, atom: str, empty: bool) -> tuple[str, bool]:
        ch = self.peek()
        if ch not in ("*", "+", "?", "{"):
            return atom, empty
        self.pos += 1
        if ch == "{":
            low, high = self.counts()
        else:
            low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[ch]
        if self.peek() == "?":
            self.pos += 1  # lazy: the same language
        if self.peek() in ("*", "+", "{"):
            raise PatternError("a repetition cannot be repeated directly")
        if empty and (high is None or high > 1):
            # (a?){1000} keeps a parse stack per way to split the text: quadratic or worse per token.
            raise PatternError("a group that can match nothing cannot be repeated; repeat what it holds instead")
        name = atom if _is_single(atom) else self.add("pattern-item", atom)
        return repeat(name, low, high, self.add), empty or low == 0

    def counts(self) -> tuple[int, int | None]:
        end = self.text.find("}", self.pos)
        if end < 0:
            raise PatternError("a {m,n} repetition is not closed")
        low_text, comma, high_text = self.text[self.pos : end].partition(",")
        self.pos = end + 1
        if not low_text.isdigit() or (high_text and not high_text.isdigit()):
            raise PatternError("a {m,n} repetition needs numbers")
        low = int(low_text)
        high = None if comma and not high_text else int(high_text) if comma else low
        for count in (low, high):
            if count is not None and count > self.max_repeat:
                raise PatternError(f"a repetition count is {count}; at most {self.max_repeat} is accepted")
        if high is not None and high < low:
            raise PatternError(f"the repetition {{{low},{high}}} is reversed")
        self.budget -= low + (high or 0)
        if self.budget < 0:
            raise PatternError(f"its repetition counts add up to more than {10 * self.max_repeat}")
        return low, high


def _json_literal(ch: str) -> str:
    if ch in '"\\':
        return gbnf_literal("\\" + ch)  # the JSON text is escaped
    if ch in _JSON_ESCAPED:
        return gbnf_literal(_JSON_ESCAPED[ch])
    if ord(ch) < 0x20 or ord(ch) == 0x7F:
        return gbnf_literal(f"\\u{ord(ch):04x}")
    return f'"{gbnf_escape(ch)}"'


def _class_char(code: int) -> str:
    ch = chr(code)
    return ch if ch.isascii() and ch.isalnum() else f"\\u{code:04X}" if code < 0x10000 else f"\\U{code:08X}"


def _class_range(r: tuple[int, int]) -> str:
    return _class_char(r[0]) if r[0] == r[1] else f"{_class_char(r[0])}-{_class_char(r[1])}"


def _cut(r: tuple[int, int], excluded: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """The range without the excluded ones."""
    pieces = [r]
    for low, high in excluded:
        cut = []
        for a, b in pieces:
            if b < low or a > high:
                cut.append((a, b))
                continue
            if a < low:
                cut.append((a, low - 1))
            if b > high:
                cut.append((high + 1, b))
        pieces = cut
    return pieces


def _is_single(atom: str) -> bool:
    """A rule name or one bracket class: repeatable as it is; anything else gets a helper rule first."""
    if atom.startswith("[") and atom.endswith("]") and " " not in atom:
        return True
    return atom.replace("-", "").isalnum()
