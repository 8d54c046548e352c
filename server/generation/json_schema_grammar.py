"""JSON Schema to llama.cpp GBNF, with documented bounds: the grammar that constrains structured output.

Checking and conversion are one pass, in the HTTP process, before a request is admitted: a keyword the grammar
cannot enforce, or a value past a bound, is a 400 naming the keyword's path and the bound. The grammar is linear
in the size of the schema: repetitions use llama.cpp's `x{m,n}` syntax (split into blocks where llama.cpp's own
limit on one repetition would otherwise silently drop the maximum), and an object's optional properties are one
rule each instead of every combination.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from server.errors import InvalidRequestError
from server.generation.grammar_rules import FORMAT_RULES, PRIMITIVE_RULES, gbnf_literal, repeat
from server.generation.regex_grammar import PatternError, pattern_rule
from server.generation.schema_keywords import ANNOTATIONS, BOUNDS, KEYWORDS, TYPES, SchemaBounds, implied_type


# Keywords that only describe: accepted and ignored.
def schema_grammar(schema: Any, path: str, bounds: SchemaBounds = BOUNDS) -> str:
    """The GBNF (root rule `root`) of JSON that validates against `schema`; raises a 400 naming what is refused."""
    if len(json.dumps(schema)) > bounds.max_schema_bytes:
        raise InvalidRequestError(
            f"The JSON schema at '{path}' is larger than this server accepts ({bounds.max_schema_bytes} bytes).",
            param=path,
        )
    converter = _Converter(schema, path, bounds)
    converter.primitive("space")
    converter.rules["root"] = converter.visit(schema, path, "root-value", 0)
    return converter.text()


def check_schema(schema: Any, path: str, bounds: SchemaBounds = BOUNDS) -> None:
    """Refuse, with a 400 naming the keyword, a schema whose grammar could not be built within the bounds."""
    schema_grammar(schema, path, bounds)


def _refuse(message: str, where: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=where)


class _Converter:
    def __init__(self, root: Any, path: str, bounds: SchemaBounds, prefix: str = "") -> None:
        self.prefix = prefix  # of every rule it names, but the shared built-in ones
        self.root = root
        self.root_path = path
        self.bounds = bounds
        self.rules: dict[str, str] = {}
        self.nodes = 0
        self._refs: dict[str, str] = {}
        # How many ways the JSON of a rule can begin. llama.cpp keeps one parse stack per way, and a token the
        # model picks outside the grammar costs a pass over the vocabulary per stack: this is bounded.
        self.widths: dict[str, int] = {}
        self.fanout = 1  # alternatives enclosing the schema being visited, multiplied

    def text(self) -> str:
        return "".join(f"{name} ::= {body}\n" for name, body in self.rules.items())

    # -- naming ---------------------------------------------------------------------------------------------
    def add(self, hint: str, body: str) -> str:
        """A new rule holding `body`; returns its name."""
        base = "".join(c if c.isascii() and c.isalnum() else "-" for c in hint).strip("-")[:40] or "r"
        base = base if base.startswith(self.prefix) else self.prefix + base
        name, n = base, 1
        while name in self.rules or name in PRIMITIVE_RULES or name in FORMAT_RULES or name in ("root", "call"):
            n += 1
            name = f"{base}-{n}"
        self.rules[name] = body
        return name

    def primitive(self, name: str) -> str:
        """A shared built-in rule (and the ones it uses), added once."""
        if name not in self.rules:
            body, deps = PRIMITIVE_RULES.get(name) or FORMAT_RULES[name]
            self.rules[name] = body
            for dep in deps:
                self.primitive(dep)
        return name

    # -- schemas --------------------------------------------------------------------------------------------
    def visit(self, node: Any, where: str, hint: str, depth: int) -> str:
        """A GBNF expression for JSON matching `node`, followed by optional whitespace."""
        self.nodes += 1
        if self.nodes > self.bounds.max_nodes:
            raise _refuse(f"The JSON schema has more than {self.bounds.max_nodes} subschemas.", where)
        if depth > self.bounds.max_depth:
            raise _refuse(f"The JSON schema nests deeper than {self.bounds.max_depth} levels (at '{where}').", where)
        if node is True:
            return self.primitive("value")
        if node is False:
            raise _refuse(f"A `false` schema (at '{where}') admits no value.", where)
        if not isinstance(node, dict):
            raise _refuse(f"Invalid schema at '{where}': expected an object.", where)
        for key in node:
            if key not in KEYWORDS:
                raise _refuse(f"The JSON schema keyword '{key}' (at '{where}.{key}') is not supported by this server.",
                              f"{where}.{key}")  # fmt: skip
        for key in ("$defs", "definitions"):
            if key in node and not isinstance(node[key], dict):
                raise _refuse(f"'{where}.{key}' must be an object.", f"{where}.{key}")
        combinator = next((key for key in ("$ref", "anyOf", "oneOf") if key in node), None)
        if combinator is not None:
            # A grammar cannot intersect schemas: keywords beside one of these would be silently dropped.
            beside = sorted(set(node) - ANNOTATIONS - {combinator, "$defs", "definitions"})
            if beside:
                raise _refuse(
                    f"'{beside[0]}' beside '{combinator}' (at '{where}') is not supported: move it into the branches.",
                    f"{where}.{beside[0]}",
                )
        if "$ref" in node:
            return self.ref(node["$ref"], f"{where}.$ref", depth)
        if "const" in node:
            return self.literals([node["const"]], where, hint)
        if "enum" in node:
            values = node["enum"]
            if not isinstance(values, list) or not values:
                raise _refuse(f"'{where}.enum' must be a non-empty list.", f"{where}.enum")
            self.bound(len(values), self.bounds.max_branches, f"{where}.enum", "values")
            return self.literals(values, where, hint)
        for key in ("anyOf", "oneOf"):
            if key in node:
                return self.alternatives(node[key], f"{where}.{key}", hint, depth)
        kind = node.get("type")
        if isinstance(kind, list):
            if not kind or not all(isinstance(t, str) and t in TYPES for t in kind):
                raise _refuse(f"Invalid schema type {kind!r} at '{where}.type'.", f"{where}.type")
            options = [self.typed(node, t, where, hint, depth) for t in dict.fromkeys(kind)]
            if len(options) == 1:
                return options[0]
            return self.widened(self.add(hint, " | ".join(options)), options, f"{where}.type")
        if kind is not None and (not isinstance(kind, str) or kind not in TYPES):
            raise _refuse(f"Invalid schema type {kind!r} at '{where}.type'.", f"{where}.type")
        if kind is None:
            kind = implied_type(node)
        return self.primitive("value") if kind is None else self.typed(node, kind, where, hint, depth)

    def typed(self, node: dict[str, Any], kind: str, where: str, hint: str, depth: int) -> str:
        if kind == "object":
            return self.object(node, where, hint, depth)
        if kind == "array":
            return self.array(node, where, hint, depth)
        if kind == "string":
            return self.string(node, where, hint)
        return self.primitive(kind)

    def ref(self, target: Any, where: str, depth: int) -> str:
        if not isinstance(target, str):
            raise _refuse(f"'{where}' must be a string.", where)
        if target in self._refs:
            return self._refs[target]
        node = self.resolve(target, where)
        name = self.add(target.rsplit("/", 1)[-1] or "root-ref", "")
        self._refs[target] = name  # first, so a recursive schema refers to the rule being built
        self.rules[name] = self.visit(node, where, name, depth + 1)
        self.widths[name] = self.width(self.rules[name])
        return name

    def resolve(self, target: str, where: str) -> Any:
        if target == "#":
            return self.root
        if not target.startswith("#/"):
            raise _refuse(
                f"Only local references ('#/$defs/...') are supported (at '{where}': {target[:80]!r}).", where
            )
        node: Any = self.root
        for part in target[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise _refuse(f"'{where}' refers to a definition that does not exist: {target[:80]!r}.", where)
            node = node[part]
        return node

    def literals(self, values: list[Any], where: str, hint: str) -> str:
        options = " | ".join(gbnf_literal(json.dumps(value, ensure_ascii=False)) for value in values)
        name = self.add(hint, f"({options}) space")
        self.widths[name] = len(values)
        self.check_width(len(values), where)
        return name

    def alternatives(self, branches: Any, where: str, hint: str, depth: int) -> str:
        if not isinstance(branches, list) or not branches:
            raise _refuse(f"'{where}' must be a non-empty list.", where)
        self.bound(len(branches), self.bounds.max_branches, where, "alternatives")
        # Alternatives that share a beginning keep their parse stacks alive together, so widths inside them
        # multiply: each is bounded as if every enclosing alternative were still open.
        outer, self.fanout = self.fanout, self.fanout * len(branches)
        try:
            options = [self.visit(b, f"{where}[{i}]", f"{hint}-{i}", depth + 1) for i, b in enumerate(branches)]
        finally:
            self.fanout = outer
        return self.widened(self.add(hint, " | ".join(options)), options, where)

    def width(self, expression: str) -> int:
        return self.widths.get(expression, 1)

    def widened(self, name: str, options: list[str], where: str) -> str:
        """`name` is one of `options`: its width is theirs together, within the bound."""
        self.widths[name] = sum(self.width(option) for option in options)
        self.check_width(self.widths[name], where)
        return name

    def check_width(self, width: int, where: str) -> None:
        self.bound(width, self.bounds.max_width, where, "ways for the value to begin")
        self.bound(
            width * self.fanout, self.bounds.max_nested_width, where, "ways to begin, with the enclosing alternatives"
        )

    def object(self, node: dict[str, Any], where: str, hint: str, depth: int) -> str:
        properties = node.get("properties", {})
        if not isinstance(properties, dict):
            raise _refuse(f"'{where}.properties' must be an object.", f"{where}.properties")
        self.bound(len(properties), self.bounds.max_properties, f"{where}.properties", "properties")
        required = node.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise _refuse(f"'{where}.required' must be a list of names.", f"{where}.required")
        missing = [name for name in required if name not in properties]
        extra = node.get("additionalProperties", not properties)
        if missing and extra is False:
            raise _refuse(
                f"'{where}.required' names {missing[0]!r}, which is not in 'properties'.", f"{where}.required"
            )
        if properties and extra is not False:
            # Extra keys could repeat a declared one with any value: a grammar cannot exclude those names.
            raise _refuse(
                f"'additionalProperties' beside 'properties' (at '{where}') is only supported as false.",
                f"{where}.additionalProperties",
            )
        properties = {**properties, **dict.fromkeys(missing, True)}  # required: present, with any value
        pairs = []  # (rule of `"key": value`, required)
        for name, child in properties.items():
            value = self.visit(child, f"{where}.properties.{name}", f"{hint}-{name}", depth + 1)
            key = gbnf_literal(json.dumps(name, ensure_ascii=False))
            pairs.append((self.add(f"{hint}-{name}-kv", f'{key} space ":" space {value}'), name in required))
        if extra is not False:
            value = self.primitive("value") if extra is True else self.visit(
                extra, f"{where}.additionalProperties", f"{hint}-extra", depth + 1
            )  # fmt: skip
            pair = self.add(f"{hint}-extra-kv", f'{self.primitive("string")} ":" space {value}')
            more = self.add(f"{hint}-extra-more", f'("," space {pair})*')
            if not pairs:
                return self.add(hint, f'"{{" space ({pair} {more})? "}}" space')
            pairs.append((f"{pair} {more}", False))
        name = self.add(hint, f'"{{" space {self.members(pairs, hint)} "}}" space')
        run = longest = 0
        for _, needed in pairs:
            run = 0 if needed else run + 1
            longest = max(longest, run)
        self.widths[name] = longest + 1  # after a key: any of the optional ones next, or the next required one
        self.check_width(self.widths[name], f"{where}.properties")
        return name

    def members(self, pairs: list[tuple[str, bool]], hint: str) -> str:
        """Properties in their declared order, the optional ones skippable, commas only between those written.
        Two rules per property: `first-i` (nothing written yet) and `rest-i` (something was)."""
        first, rest = "", ""  # for i == len(pairs): nothing more
        for i in range(len(pairs) - 1, -1, -1):
            pair, needed = pairs[i]
            after = f" {rest}" if rest else ""
            first_body = f"{pair}{after}" if needed else f"{pair}{after} | {first}" if first else f"({pair}{after})?"
            rest_body = f'"," space {pair}{after}' if needed else f'("," space {pair})?{after}'
            rest = self.add(f"{hint}-rest-{i}", rest_body)
            first = self.add(f"{hint}-first-{i}", first_body)
        return first

    def array(self, node: dict[str, Any], where: str, hint: str, depth: int) -> str:
        low = self.count(node, "minItems", where, self.bounds.max_items, 0)
        high = self.count(node, "maxItems", where, self.bounds.max_items, None)
        if high is not None and high < low:
            raise _refuse(f"'{where}.maxItems' is smaller than 'minItems'.", f"{where}.maxItems")
        prefix = node.get("prefixItems", [])
        if not isinstance(prefix, list):
            raise _refuse(f"'{where}.prefixItems' must be a list.", f"{where}.prefixItems")
        self.bound(len(prefix), self.bounds.max_branches, f"{where}.prefixItems", "items")
        items = node.get("items", True)
        if prefix:
            if low > len(prefix):
                raise _refuse(f"'{where}.minItems' is more than its 'prefixItems'.", f"{where}.minItems")
            rules = [self.visit(p, f"{where}.prefixItems[{i}]", f"{hint}-{i}", depth + 1) for i, p in enumerate(prefix)]
            body = ' "," space '.join(rules)
            return self.add(hint, f'"[" space {body} "]" space')
        item = self.visit(items, f"{where}.items", f"{hint}-item", depth + 1)
        next_item = self.add(f"{hint}-next", f'"," space {item}')
        most = None if high is None else high - 1
        tail = repeat(next_item, max(low - 1, 0), most, self.add)
        listed = f"{item} {tail}".strip()
        body = f"({listed})?" if low == 0 else listed
        if high == 0:
            body = ""
        return self.add(hint, f'"[" space {body} "]" space')

    def string(self, node: dict[str, Any], where: str, hint: str) -> str:
        if "format" in node:
            fmt = node["format"]
            if fmt not in FORMAT_RULES:
                raise _refuse(f"The string format {fmt!r} (at '{where}.format') is not supported.", f"{where}.format")
            return self.add(hint, f'"\\"" {self.primitive(fmt)} "\\"" space')
        if "pattern" in node:
            pattern = node["pattern"]
            if not isinstance(pattern, str):
                raise _refuse(f"'{where}.pattern' must be a string.", f"{where}.pattern")
            self.bound(len(pattern), self.bounds.max_pattern_chars, f"{where}.pattern", "characters")
            try:
                body = pattern_rule(pattern, self.add, self.bounds.max_pattern_repeat)
            except PatternError as exc:
                raise _refuse(
                    f"The pattern at '{where}.pattern' is not supported: {exc}.", f"{where}.pattern"
                ) from None
            return self.add(hint, f'"\\"" {body} "\\"" space')
        low = self.count(node, "minLength", where, self.bounds.max_length, 0)
        high = self.count(node, "maxLength", where, self.bounds.max_length, None)
        if high is not None and high < low:
            raise _refuse(f"'{where}.maxLength' is smaller than 'minLength'.", f"{where}.maxLength")
        if low == 0 and high is None:
            return self.primitive("string")
        return self.add(hint, f'"\\"" {repeat(self.primitive("char"), low, high, self.add)} "\\"" space')

    # -- bounds ---------------------------------------------------------------------------------------------
    def count(self, node: dict[str, Any], key: str, where: str, most: int, default: int | None) -> Any:
        if key not in node:
            return default
        value = node[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _refuse(
                f"'{where}.{key}' must be a non-negative integer (got {str(value)[:40]!r}).", f"{where}.{key}"
            )
        self.bound(value, most, f"{where}.{key}", "")
        return value

    @staticmethod
    def bound(value: int, most: int, where: str, unit: str) -> None:
        if value > most:
            what = f"{value} {unit}".strip()
            raise _refuse(
                f"'{where}' is {what}; this server accepts at most {most} there (see the README's structured output "
                "bounds).",
                where,
            )


def output_grammar(json_schema: str, *, path: str = "response_format") -> str:
    """The grammar of a request's JSON output: "{}" is any JSON object, anything else a schema's JSON text."""
    if json_schema == "{}":
        converter = _Converter({}, path, BOUNDS)
        converter.primitive("space")
        converter.rules["root"] = converter.primitive("object")
        return converter.text()
    return schema_grammar(json.loads(json_schema), path)


def arguments_grammar(schemas: Sequence[tuple[Any, str]], bounds: SchemaBounds = BOUNDS) -> tuple[str, list[str]]:
    """Rules for several JSON schemas side by side, each the root of its own `$ref`s (the parameters of a
    request's functions, with their request paths), and the expression of each: a tool-call grammar places them
    in the model's own call syntax. No `root` rule; each schema within `bounds`, as `schema_grammar` checks."""
    rules: dict[str, str] = {}
    expressions = []
    for i, (schema, where) in enumerate(schemas):
        converter = _Converter(schema, where, bounds, prefix=f"f{i}-")
        converter.primitive("space")
        expressions.append(converter.visit(schema, where, "arguments", 0))
        rules.update(converter.rules)  # the built-in rules, shared, are the same in every converter
    return "".join(f"{name} ::= {body}\n" for name, body in rules.items()), expressions
