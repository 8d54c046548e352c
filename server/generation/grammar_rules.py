"""GBNF building blocks shared by the schema and pattern converters: built-in rules, literals, bounded repeats."""

from __future__ import annotations

from collections.abc import Callable

# name -> (body, rules it uses). Every value rule ends with `space`, so rules can be written one after another.
PRIMITIVE_RULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "space": ('" "?', ()),  # compact JSON: no runs of whitespace for a model to wander into
    # JSON forbids raw control characters in strings: they are excluded, escapes are one character each.
    # Surrogates and code points past U+10FFFF (which llama.cpp's lenient UTF-8 decoder can produce from bytes a
    # model emits) are excluded too.
    "char": (
        '[^"\\\\\\x7F\\x00-\\x1F\\uD800-\\uDFFF\\U00110000-\\U7FFFFFFF] | [\\\\] (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})',
        (),
    ),
    "string": ('"\\"" char* "\\"" space', ("char", "space")),
    "integral-part": ("[0] | [1-9] [0-9]{0,15}", ()),
    "decimal-part": ("[0-9]{1,16}", ()),
    "number": (
        '("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)? space',
        ("integral-part", "decimal-part", "space"),
    ),
    "integer": ('("-"? integral-part) space', ("integral-part", "space")),
    "boolean": ('("true" | "false") space', ("space",)),
    "null": ('"null" space', ("space",)),
    "object": (
        '"{" space (string ":" space value ("," space string ":" space value)*)? "}" space',
        ("string", "value", "space"),
    ),
    "array": ('"[" space (value ("," space value)*)? "]" space', ("value", "space")),
    "value": (
        "object | array | string | number | boolean | null",
        ("object", "array", "string", "number", "boolean", "null"),
    ),
}

# String formats: the text between the quotes.
FORMAT_RULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "date": ('[0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [1-2] [0-9] | "3" [0-1])', ()),
    "time": (
        '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{3})? '
        '("Z" | ("+" | "-") ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])',
        (),
    ),
    "date-time": ('date "T" time', ("date", "time")),
    "uuid": ('[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12}', ()),
}

# llama.cpp turns a repetition maximum above 2000 into "no maximum", silently: stay well below it, and build
# longer runs out of blocks.
REPEAT_LIMIT = 1000
BLOCK = 100


def gbnf_escape(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return "".join(out)


def gbnf_literal(text: str) -> str:
    return f'"{gbnf_escape(text)}"'


def repeat(item: str, low: int, high: int | None, add: Callable[[str, str], str] | None = None) -> str:
    """`item` (a rule name or bracket expression) between `low` and `high` times (None: no maximum), within
    llama.cpp's limit on one repetition. `add(hint, body)` defines a helper rule for long runs."""
    parts = [_exactly(item, low, add)]
    if high is None:
        parts.append(f"{item}*")
    else:
        parts.append(_up_to(item, high - low, add))
    return " ".join(part for part in parts if part)


def _exactly(item: str, count: int, add: Callable[[str, str], str] | None) -> str:
    if count == 0:
        return ""
    if count <= REPEAT_LIMIT:
        return f"{item}{{{count}}}"
    blocks, rest = divmod(count, BLOCK)
    block = _block(item, add)
    return f"{block}{{{blocks}}}" + (f" {item}{{{rest}}}" if rest else "")


def _up_to(item: str, count: int, add: Callable[[str, str], str] | None) -> str:
    if count == 0:
        return ""
    if count <= REPEAT_LIMIT:
        return f"{item}{{0,{count}}}"
    # 0..count as (fewer than `blocks` whole blocks, then up to a block less one) or (all blocks, then the rest).
    blocks, rest = divmod(count, BLOCK)
    block = _block(item, add)
    full = f"{block}{{{blocks}}}" + (f" {item}{{0,{rest}}}" if rest else "")
    return f"({block}{{0,{blocks - 1}}} {item}{{0,{BLOCK - 1}}} | {full})"


def _block(item: str, add: Callable[[str, str], str] | None) -> str:
    if add is None:
        raise ValueError("a repetition this long needs helper rules")
    return add(f"{item}-block", f"{item}{{{BLOCK}}}")
