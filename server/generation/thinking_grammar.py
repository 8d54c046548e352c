"""An output grammar behind a reasoning model's thinking block: the block is free text up to its end marker, and
the grammar constrains only the answer after it.

`with_thinking` wraps the final GBNF text of any constraint (a JSON schema, forced tool calls, a client's own
grammar): its `root` rule is renamed, and a new `root` puts the thinking block first. The block's text is every
string in which the end marker first appears at its end, written as right-recursive rules (one per state of the
marker's matching automaton), so llama.cpp's grammar stacks do not grow with the length of the thinking. How long
the block may run is the engine's to enforce (its thinking budget forces the end marker).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from server.generation.grammar_rules import gbnf_literal

ROOT = "root"
BLANKS = r"[ \x09\x0A\x0D]{0,8}"  # between the end marker and the answer, as models write it ("</think>\n\n")
_WORD = re.compile(r"[A-Za-z0-9_-]+")


def with_thinking(grammar: str, start: str, end: str, *, opened: bool, required: bool, implicit: bool = False) -> str:
    """`grammar` as the answer after a thinking block. `opened`: the reply begins inside the block (the prompt opened
    it, or with `implicit` it opens implicitly, and the reply may still write `start` first, after blanks); else the
    block opens with `start`, and is optional unless `required`."""
    prefix = _unused_prefix(grammar)
    answer = f"{prefix}-answer"
    rules = [_renamed(grammar, ROOT, answer).rstrip("\n")]
    text = _until(end, prefix, rules)
    if opened and implicit:
        # The block's text already takes a leading `start`; the optional one says so (llama.cpp merges the two ways).
        head = f"({BLANKS} {gbnf_literal(start)})? {text} {BLANKS}"
    elif opened:
        head = f"{text} {BLANKS}"
    elif required:
        head = f"{gbnf_literal(start)} {text} {BLANKS}"
    else:
        head = f"({gbnf_literal(start)} {text} {BLANKS})?"
    rules.append(f"{ROOT} ::= {head} {answer}")
    return "\n".join(rules) + "\n"


def _until(marker: str, prefix: str, rules: list[str]) -> str:
    """Rules for any text that ends at the first occurrence of `marker` (the marker included); returns the first
    rule's name. Rule k is "the last k characters read are the marker's first k"."""
    names = [f"{prefix}-{k}" for k in range(len(marker))]
    for k, name in enumerate(names):
        expected = marker[k]
        alternatives = [gbnf_literal(expected) + ("" if k + 1 == len(marker) else f" {names[k + 1]}")]
        restarts = set()
        for char in dict.fromkeys(marker):
            if char == expected:
                continue
            state = _next_state(marker, k, char)
            if state > 0:
                alternatives.append(f"{gbnf_literal(char)} {names[state]}")
                restarts.add(char)
        excluded = "".join(_class_char(c) for c in sorted({expected, *restarts}))
        alternatives.append(f"[^{excluded}] {names[0]}")
        rules.append(f"{name} ::= " + " | ".join(alternatives))
    return names[0]


def _next_state(marker: str, matched: int, char: str) -> int:
    """How much of the marker has been read after `marker[:matched] + char`: the longest prefix of the marker
    that ends the text read."""
    text = marker[:matched] + char
    return next(n for n in range(min(len(text), len(marker)), -1, -1) if text.endswith(marker[:n]))


def _class_char(char: str) -> str:
    """A character inside a GBNF character class, escaped whatever it is (`]`, `^`, `-` and `\\` included)."""
    if char.isalnum() and char.isascii():
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02X}"
    return f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}"


def _unused_prefix(grammar: str) -> str:
    """A rule-name prefix none of the grammar's names starts with."""
    words = {grammar[a:b] for a, b in _words(grammar)}
    prefix, n = "thinking", 0
    while any(word.startswith(prefix) for word in words):
        n += 1
        prefix = f"thinking{n}"
    return prefix


def _renamed(grammar: str, old: str, new: str) -> str:
    """The grammar with every rule name `old` (its definition and its references) spelt `new`."""
    out, last = [], 0
    for a, b in _words(grammar):
        if grammar[a:b] == old:
            out += [grammar[last:a], new]
            last = b
    return "".join(out) + grammar[last:]


def _words(grammar: str) -> Iterator[tuple[int, int]]:
    """The spans of the names (and repetition counts) in GBNF text, outside literals, classes, token references
    and comments."""
    i, n = 0, len(grammar)
    while i < n:
        char = grammar[i]
        if char in '"[<':  # a literal, a class, a token reference
            close = {'"': '"', "[": "]", "<": ">"}[char]
            i += 1
            while i < n and grammar[i] != close:
                i += 2 if grammar[i] == "\\" else 1
            i += 1
        elif char == "#":
            newline = grammar.find("\n", i)
            i = n if newline == -1 else newline + 1
        elif (match := _WORD.match(grammar, i)) is not None:
            yield match.start(), match.end()
            i = match.end()
        else:
            i += 1
