"""The JSON Schema subset a grammar can enforce, and the bounds on one output schema (README: Structured output)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ANNOTATIONS = frozenset(
    "description title default examples $schema $id $comment deprecated readOnly writeOnly strict".split()  # noqa: SIM905
)
KEYWORDS = ANNOTATIONS | frozenset(
    "type properties required additionalProperties items prefixItems minItems maxItems enum const anyOf oneOf "  # noqa: SIM905
    "$ref $defs definitions minLength maxLength format pattern".split()
)
TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


@dataclass(frozen=True)
class SchemaBounds:
    """What one output schema may ask for. Each bound keeps the grammar's size, and the time llama.cpp takes to
    build and run it, proportional to something small."""

    max_schema_bytes: int = 64 * 1024  # the schema as JSON text
    max_nodes: int = 2_000  # subschemas, counted everywhere
    max_depth: int = 32  # subschemas nested in each other
    max_properties: int = 256  # per object
    max_branches: int = 128  # anyOf/oneOf alternatives, enum values, prefixItems
    max_width: int = 128  # ways a value can begin (alternatives, enum values, optional properties in a row)
    max_nested_width: int = 1024  # the same, multiplied through alternatives nested in alternatives
    max_length: int = 10_000  # minLength / maxLength of a string
    max_items: int = 1_000  # minItems / maxItems of an array
    max_pattern_chars: int = 1_000
    max_pattern_repeat: int = 1_000  # {m,n} in a pattern
    max_pattern_ways: int = 4_096  # ways a pattern can be parsed at once (server/generation/grammar_ways.py)


BOUNDS = SchemaBounds()


def implied_type(node: dict[str, Any]) -> str | None:
    """The type a schema without `type` implies by its keywords (JSON Schema applies them to that type only)."""
    if any(k in node for k in ("properties", "additionalProperties", "required")):
        return "object"
    if any(k in node for k in ("items", "prefixItems", "minItems", "maxItems")):
        return "array"
    if any(k in node for k in ("minLength", "maxLength", "pattern", "format")):
        return "string"
    return None
