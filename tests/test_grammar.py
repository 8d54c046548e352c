"""The output grammars: JSON strings never hold raw control characters, and the Hermes tool-call wrapper."""

import json

from server.engine.native import json_grammar

SCHEMA = json.dumps({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


def test_json_strings_exclude_control_characters():
    char_rule = next(line for line in json_grammar(SCHEMA).splitlines() if line.startswith("char ::="))
    assert "\\x00-\\x1F" in char_rule


def test_tool_call_blocks_wrap_the_json_in_hermes_tags():
    grammar = json_grammar(SCHEMA, tool_call_blocks=2)
    root = grammar.splitlines()[0]
    assert (
        root == 'root ::= "<tool_call>\\n" call "\\n</tool_call>" ("\\n" "<tool_call>\\n" call "\\n</tool_call>"){0,1}'
    )
    assert any(line.startswith("call ::= ") for line in grammar.splitlines())
    assert (
        json_grammar(SCHEMA, tool_call_blocks=1).splitlines()[0] == 'root ::= "<tool_call>\\n" call "\\n</tool_call>"'
    )
