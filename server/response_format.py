"""`response_format`: which JSON output a request asks for, and whether this server can enforce it.

Output is enforced by a grammar built from the schema in the model worker. Only schema keywords that grammar can
express are accepted; any other is a 400 naming it, decided before generation starts (never a silent ignore).
"""

from __future__ import annotations

import json
from typing import Any

from server.errors import InvalidRequestError

PARAM = "response_format"
ANY_OBJECT = "{}"
_SUPPORTED_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "$ref",
        "$defs",
        "definitions",
        "description",
        "title",
        "default",
        "examples",
        "minLength",
        "maxLength",
        "$schema",
        "$id",
        "format",
        "pattern",
    }
)
_SUPPORTED_FORMATS = frozenset({"date", "time", "date-time", "uuid"})
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


def json_schema_of(response_format: dict[str, Any] | None) -> str | None:
    """None for plain text; "{}" for any JSON object; else the JSON text of a checked schema."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return ANY_OBJECT
    if kind != "json_schema":
        raise InvalidRequestError(
            f"Invalid value for '{PARAM}.type': {kind!r}; expected 'text', 'json_object' or 'json_schema'.",
            param=f"{PARAM}.type",
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InvalidRequestError(
            f"'{PARAM}.json_schema' must be an object with a 'name' and a 'schema'.", param=f"{PARAM}.json_schema"
        )
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"'{PARAM}.json_schema.schema' must be an object.", param=f"{PARAM}.json_schema")
    check_schema(schema, f"{PARAM}.json_schema.schema")
    return json.dumps(schema) if schema else ANY_OBJECT


def check_schema(node: Any, path: str) -> None:
    """Raise a 400 naming the first keyword a grammar cannot enforce."""
    if isinstance(node, bool):  # `true` / `false` schemas
        return
    if not isinstance(node, dict):
        raise InvalidRequestError(f"Invalid schema at '{path}': expected an object.", param=path)
    for key, value in node.items():
        where = f"{path}.{key}"
        if key not in _SUPPORTED_KEYWORDS:
            raise InvalidRequestError(
                f"The JSON schema keyword '{key}' (at '{where}') is not supported by this server.", param=where
            )
        if key == "type":
            types = value if isinstance(value, list) else [value]
            if not all(t in _TYPES for t in types):
                raise InvalidRequestError(f"Invalid schema type {value!r} at '{where}'.", param=where)
        elif key == "format" and value not in _SUPPORTED_FORMATS:
            raise InvalidRequestError(f"The string format {value!r} (at '{where}') is not supported.", param=where)
        elif key == "pattern" and not (isinstance(value, str) and value.startswith("^") and value.endswith("$")):
            raise InvalidRequestError(f"A 'pattern' must be anchored with ^ and $ (at '{where}').", param=where)
        elif key in ("properties", "$defs", "definitions"):
            if not isinstance(value, dict):
                raise InvalidRequestError(f"'{where}' must be an object.", param=where)
            for name, child in value.items():
                check_schema(child, f"{where}.{name}")
        elif key in ("items", "additionalProperties") and not isinstance(value, bool):
            check_schema(value, where)
        elif key in ("anyOf", "oneOf", "prefixItems"):
            if not isinstance(value, list):
                raise InvalidRequestError(f"'{where}' must be a list.", param=where)
            for i, child in enumerate(value):
                check_schema(child, f"{where}[{i}]")
