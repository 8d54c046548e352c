"""`response_format`: which JSON output a request asks for, and whether this server can enforce it.

Output is enforced by a grammar built from the schema (server/json_grammar.py). Only schema keywords that grammar
can express, within documented bounds, are accepted; any other is a 400 naming it, decided before generation
starts (never a silent ignore).
"""

from __future__ import annotations

import json
from typing import Any

from server.api.openai.request_parts import ResponseFormat, ResponseFormatJSONObject, ResponseFormatText
from server.generation import json_schema_grammar

PARAM = "response_format"
ANY_OBJECT = "{}"


def json_schema_of(response_format: ResponseFormat | None) -> str | None:
    """None for plain text; "{}" for any JSON object; else the JSON text of a checked schema."""
    if response_format is None or isinstance(response_format, ResponseFormatText):
        return None
    if isinstance(response_format, ResponseFormatJSONObject):
        return ANY_OBJECT
    schema = response_format.json_schema.schema_ or {}
    check_schema(schema, f"{PARAM}.json_schema.schema")
    return json.dumps(schema) if schema else ANY_OBJECT


def check_schema(node: Any, path: str) -> None:
    """Raise a 400 naming the first keyword a grammar cannot enforce, or the bound a value is past."""
    json_schema_grammar.check_schema(node, path)
