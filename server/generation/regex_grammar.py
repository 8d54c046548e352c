"""A JSON Schema `pattern` (an anchored regular expression) as GBNF for the text between a string's quotes.

The subset: literals and escapes, `.`, classes (`[a-z]`, `[^...]`, `\\d \\w \\s` and their negations), groups
(`(...)`, `(?:...)`), alternation, and the quantifiers `* + ? {m} {m,} {m,n}` (lazy forms read as greedy). Each
`{m,n}` is at most the repeat bound, and all of a pattern's counts together at most ten times it, so its grammar
stays small. Lookarounds, backreferences and inner anchors are refused. Characters JSON must escape (`"`, `\\`,
control characters) are written escaped for literals and `\\s`, and left out of classes and `.`.
"""

from __future__ import annotations

from collections.abc import Callable

from server.generation.grammar_rules import gbnf_escape, gbnf_literal, repeat

# Inside a GBNF class: what a class never produces in a JSON string (see the `char` rule in grammar_rules).
JSON_UNSAFE = '"\\\\\\x00-\\x1F\\x7F\\uD800-\\uDFFF\\U00110000-\\U7FFFFFFF'
_CLASS_ESCAPES = {"d": "0-9", "w": "a-zA-Z0-9_"}
_JSON_ESCAPED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\f": "\\f", "\b": "\\b"}


class PatternError(ValueError):
    pass


def pattern_rule(pattern: str, add: Callable[[str, str], str], max_repeat: int) -> str:
    """A GBNF expression for the JSON-escaped text matching `pattern`, which must be anchored with ^ and $."""
    if not (pattern.startswith("^") and pattern.endswith("$")) or pattern.endswith("\\$"):
        raise PatternError("it must be anchored with ^ and $")
    parser = _Parser(pattern[1:-1], add, max_repeat)
    expression, _ = parser.alternation()
    if parser.pos != len(parser.text):
        raise PatternError(f"unexpected {parser.text[parser.pos]!r} at {parser.pos + 1}")
    return f"({expression})" if expression else '""'


class _Parser:
    def __init__(self, text: str, add: Callable[[str, str], str], max_repeat: int) -> None:
        self.text = text
        self.pos = 0
        self.add = add
        self.max_repeat = max_repeat
        self.budget = 10 * max_repeat  # all counts of the pattern together

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
            inner, empty = self.alternation()
            if self.take() != ")":
                raise PatternError("a group is not closed")
            return self.add("pattern-group", inner or '""'), empty
        if ch == "[":
            return self.char_class(), False
        if ch == ".":
            return f"[^{JSON_UNSAFE}]", False
        if ch in "^$":
            raise PatternError("anchors are only supported at the start and the end")
        if ch in "*+?{":
            raise PatternError(f"nothing to repeat before {ch!r}")
        if ch == "\\":
            return self.escape(), False
        return _literal(ch), False

    def escape(self) -> str:
        ch = self.take()
        if ch in _CLASS_ESCAPES:
            return f"[{_CLASS_ESCAPES[ch]}]"
        if ch in "DW":
            return f"[^{_CLASS_ESCAPES[ch.lower()]}{JSON_UNSAFE}]"
        if ch == "s":
            return '([ ] | "\\\\t" | "\\\\n" | "\\\\r" | "\\\\f")'
        if ch == "S":
            return f"[^ {JSON_UNSAFE}]"
        return _literal(self.escaped_char(ch))

    def escaped_char(self, code: str) -> str:
        """The character an escape other than a class stands for: \\n \\t \\r \\f, \\uXXXX, \\xXX, or punctuation."""
        if code in "ux":
            digits = self.text[self.pos : self.pos + (4 if code == "u" else 2)]
            if len(digits) != (4 if code == "u" else 2) or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise PatternError(f"\\{code} needs {'4' if code == 'u' else '2'} hexadecimal digits")
            self.pos += len(digits)
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
            return f"[^{''.join(_class_range(r) for r in ranges)}{JSON_UNSAFE}]"
        # A positive class never produces what JSON must escape: those characters are cut out of its ranges.
        safe = [piece for r in ranges for piece in _json_safe(r)]
        if not safe:
            raise PatternError("a class holds only characters a JSON string must escape")
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


def _literal(ch: str) -> str:
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


def _json_safe(r: tuple[int, int]) -> list[tuple[int, int]]:
    """The range without the characters a JSON string must escape (control characters, quote, backslash)."""
    pieces = [r]
    for low, high in ((0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F)):
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
