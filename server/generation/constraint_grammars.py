"""Output constraints besides JSON schemas, as GBNF grammars for `GenerationPlan.grammar`: a regular expression the
whole output matches, one of a list of strings, or a client's own grammar. Each is bounded (README: Structured
output) and refused with a 400 naming the request field it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from server.errors import InvalidRequestError
from server.generation.grammar_check import check_grammar
from server.generation.grammar_rules import gbnf_literal
from server.generation.regex_grammar import PatternError, text_rule
from server.generation.schema_keywords import BOUNDS as SCHEMA_BOUNDS


@dataclass(frozen=True)
class ChoiceBounds:
    max_choices: int = 128  # as a schema's enum values: each one is a way for the output to begin
    max_choice_chars: int = 1_000
    max_total_chars: int = 16_000  # escaped, the grammar stays within a client grammar's 64 KiB


CHOICE_BOUNDS = ChoiceBounds()


def regex_grammar(regex: str, where: str) -> str:
    """The grammar of an output that `regex` matches whole, with the bounds of a schema's `pattern`."""
    most = SCHEMA_BOUNDS.max_pattern_chars
    if len(regex) > most:
        raise InvalidRequestError(
            f"The regular expression at '{where}' is {len(regex)} characters; this server accepts at most {most}.",
            param=where,
        )
    rules: dict[str, str] = {}

    def add(hint: str, body: str) -> str:
        name = f"{hint}-{len(rules) + 1}"
        rules[name] = body
        return name

    try:
        root = text_rule(regex, add, SCHEMA_BOUNDS.max_pattern_repeat, SCHEMA_BOUNDS.max_pattern_ways)
    except PatternError as exc:
        raise InvalidRequestError(
            f"The regular expression at '{where}' is not supported: {exc}.", param=where
        ) from None
    return f"root ::= {root}\n" + "".join(f"{name} ::= {body}\n" for name, body in rules.items())


def choice_grammar(choices: Sequence[str], where: str, bounds: ChoiceBounds = CHOICE_BOUNDS) -> str:
    """The grammar of an output that is exactly one of `choices`."""
    if not choices:
        raise InvalidRequestError(f"'{where}' must list at least one string.", param=where)
    if len(choices) > bounds.max_choices:
        raise InvalidRequestError(
            f"'{where}' lists {len(choices)} strings; this server accepts at most {bounds.max_choices}.", param=where
        )
    for i, choice in enumerate(choices):
        if len(choice) > bounds.max_choice_chars:
            raise InvalidRequestError(
                f"'{where}[{i}]' is {len(choice)} characters; this server accepts at most {bounds.max_choice_chars}.",
                param=f"{where}[{i}]",
            )
    total = sum(len(choice) for choice in choices)
    if total > bounds.max_total_chars:
        raise InvalidRequestError(
            f"The strings of '{where}' are {total} characters together; this server accepts at most "
            f"{bounds.max_total_chars}.",
            param=where,
        )
    return "root ::= " + " | ".join(gbnf_literal(choice) for choice in dict.fromkeys(choices)) + "\n"


def client_grammar(grammar: str, where: str) -> str:
    """A client's own GBNF grammar, once it is within the bounds."""
    check_grammar(grammar, where)
    return grammar
