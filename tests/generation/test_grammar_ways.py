"""Counting the parse stacks llama.cpp may keep for a grammar: exact ways to begin, an upper bound on the ways to
be parsed at once; both bounded for client grammars and regular expressions, ordinary ones well within."""

from __future__ import annotations

import json

import pytest

from server.errors import InvalidRequestError
from server.generation.constraint_grammars import regex_grammar
from server.generation.grammar_check import BOUNDS, check_grammar
from server.generation.grammar_reader import GrammarReadError, read_grammar
from server.generation.grammar_ways import SATURATED, grammar_ways
from server.generation.json_schema_grammar import output_grammar
from server.generation.schema_keywords import BOUNDS as SCHEMA_BOUNDS
from tests.real.test_structured_output_real import SCHEMAS

NESTED_REGEX = "((((a|aa){1,9}){1,9}){1,9}){1,9}"  # the reviewer's: 38 characters, 3.5-5 s a token


def levels(k: int) -> str:
    """Each level begins with the next one, two ways: 2^k ways to begin, each a parse stack llama.cpp builds."""
    rules = "".join(f'r{i} ::= r{i + 1} "x" | r{i + 1} "y"\n' for i in range(k))
    return f'root ::= r0\n{rules}r{k} ::= "z"\n'


@pytest.mark.parametrize("k", [1, 5, 12, 14])
def test_ways_to_begin_are_counted_exactly(k):
    ways = grammar_ways(levels(k))
    assert ways.begin == 2**k and ways.begin_rule == ("r0" if k else "root")


def test_alternatives_that_begin_differently_are_never_parsed_together():
    together = grammar_ways('root ::= x | x\nx ::= ("a" | "aa"){1,9}\n').at_once
    apart = grammar_ways('root ::= "p" x | "q" x\nx ::= ("a" | "aa"){1,9}\n').at_once
    assert apart * 2 == together


@pytest.mark.parametrize(
    ("grammar", "most"),
    [
        ('root ::= ("a" | "aa")*\n', 3),  # no maximum: one rule calling itself last
        ('root ::= ("ab" | "cd"){1,900}\n', 2),  # one length: one copy at a time
        ('root ::= [a-z]{0,1000} "." [0-9]{1000}\n', 3),
        ("root ::= " + '"a" ' * 2000 + "\n", 1),  # one part at a time
    ],
)
def test_repetitions_that_cannot_be_split_two_ways_do_not_multiply(grammar, most):
    assert grammar_ways(grammar).at_once <= most


def test_bounded_repetitions_of_parts_of_varying_length_multiply():
    assert grammar_ways('root ::= ("a" | "aa"){1,9}\n').at_once == 18
    assert grammar_ways('root ::= (("a" | "aa"){1,9}){1,9}\n').at_once == 162
    assert grammar_ways('root ::= ((((("a" | "aa"){1,1000}){1,1000}){1,1000}){1,1000})\n').at_once == 2 * 10**12
    deep = "root ::= " + "(" * 8 + '"a" | "aa"' + "){1,1000}" * 8 + "\n"
    assert grammar_ways(deep).at_once == SATURATED  # counts stop growing, far past any bound


def test_a_recursive_rule_counts_as_its_ways_to_begin():
    # Recursion is not bounded here: the scheduler's per-token limit stops what it grows into.
    ways = grammar_ways('root ::= s\ns ::= "a" s "b" | "a" s "c" | "d"\n')
    assert ways.begin == 3 and ways.at_once < 10


def test_left_recursion_is_counted_without_looping():
    # llama.cpp refuses it when the grammar is compiled.
    assert grammar_ways('root ::= expr\nexpr ::= expr "+" "1" | "1"\n').begin == 2


def test_the_reader_reads_what_llama_cpp_reads():
    rules = read_grammar(
        'root ::= (\r\n  "a" # a comment\n  | [^"]\n)+ x\r\nx ::= "\\x41\\u00e9"{2,} | <[12]> !<[3]>\n'
    )
    assert set(rules) == {"root", "x"}
    assert len(rules["root"][0]) == 2 and rules["root"][0][0][1:] == (1, None)
    literal, low, high = rules["x"][0][0]
    assert (literal.length, literal.first, low, high) == (2, frozenset({0x41}), 2, None)
    with pytest.raises(GrammarReadError):
        read_grammar("root ::= (")


# -- the bounds, where requests meet them ---------------------------------------------------------------------


def test_a_client_grammar_that_begins_in_too_many_ways_is_refused_naming_the_rule():
    check_grammar(levels(12), "grammar")  # 4096: at the bound
    with pytest.raises(InvalidRequestError) as caught:
        check_grammar(levels(13), "grammar")
    assert caught.value.param == "grammar"
    assert "'r0' can begin in 8192 ways" in caught.value.message and f"at most {BOUNDS.max_begin_ways}" in (
        caught.value.message
    )


def test_a_client_grammar_parsed_too_many_ways_at_once_is_refused():
    grammar = 'root ::= x x\nx ::= (((("a" | "aa"){1,9}){1,9}){1,9}){1,9}\n'
    with pytest.raises(InvalidRequestError) as caught:
        check_grammar(grammar, "structured_outputs.grammar")
    assert caught.value.param == "structured_outputs.grammar"
    assert "ways at once (from the rule 'x')" in caught.value.message


def test_a_long_rule_name_is_cut_in_the_message():
    name = "r" * 5000
    grammar = levels(13).replace("r0", name)
    with pytest.raises(InvalidRequestError) as caught:
        check_grammar(grammar, "grammar")
    assert len(caught.value.message) < 600


def test_the_reviewers_regex_is_refused_naming_the_field():
    with pytest.raises(InvalidRequestError) as caught:
        regex_grammar(NESTED_REGEX, "structured_outputs.regex")
    assert caught.value.param == "structured_outputs.regex"
    assert "13122 ways at once" in caught.value.message
    assert f"at most {SCHEMA_BOUNDS.max_pattern_ways}" in caught.value.message
    regex_grammar("(((a|aa){1,9}){1,9}){1,9}", "structured_outputs.regex")  # three levels: 1458 ways


def test_a_schema_pattern_is_bounded_the_same_way():
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": f"^{NESTED_REGEX}$"}}}
    with pytest.raises(InvalidRequestError) as caught:
        output_grammar(json.dumps(schema), path="response_format.json_schema.schema")
    assert caught.value.param == "response_format.json_schema.schema.properties.code.pattern"
    assert "ways at once" in caught.value.message


ORDINARY_REGEXES = [
    r"[A-Z]{2,3}-\d{1,3}( \(v[0-9]\))?",
    r'"[a-z]{1,8}"\n[0-9]{2}\\',
    r"^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}$",
    r"(\d{1,3}\.){3}\d{1,3}",
    r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2})?)?",
    r"(\w+ ){0,200}\w+",
    r"(yes|no|maybe)(, (yes|no|maybe)){0,20}",
    r".{1,1000}",
    "x" * 1000,
]


@pytest.mark.parametrize("regex", ORDINARY_REGEXES)
def test_ordinary_regexes_are_well_within_the_bound(regex):
    grammar = regex_grammar(regex, "guided_regex")
    assert grammar_ways(grammar).at_once * 4 <= SCHEMA_BOUNDS.max_pattern_ways


JSON_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws
array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws
string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws ::= | " " | "\n" [ \t]{0,20}
"""
SUM_GBNF = r"""
root ::= sum " = " number "."
sum ::= number (ws op ws number){1,3}   # two to four numbers
op ::= "+" | "-" | "*"
number ::= [1-9] [0-9]{0,2} | "0"
ws ::= " "?
"""


@pytest.mark.parametrize("grammar", [JSON_GBNF, SUM_GBNF, 'root ::= ("yes" | "no") "."\n'])
def test_ordinary_client_grammars_are_well_within_the_bounds(grammar):
    check_grammar(grammar, "grammar")
    ways = grammar_ways(grammar)
    assert ways.begin * 100 <= BOUNDS.max_begin_ways and ways.at_once * 50 <= BOUNDS.max_ways


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_the_grammars_of_ordinary_schemas_would_pass_the_client_bounds_too(name):
    ways = grammar_ways(output_grammar(json.dumps(SCHEMAS[name])))
    assert ways.begin * 100 <= BOUNDS.max_begin_ways and ways.at_once * 20 <= BOUNDS.max_ways
