"""Regex, choice and client GBNF constraints: the language each grammar admits, its bounds (a 400 naming the field),
and a grammar llama.cpp refuses coming back as a 400 naming the field that asked for it. (Real outputs: the real
tier, tests/real/test_constraints_real.py.)"""

from __future__ import annotations

import asyncio
import re

import pytest

from server.errors import InvalidRequestError
from server.generation.constraint_grammars import CHOICE_BOUNDS, choice_grammar, client_grammar, regex_grammar
from server.generation.grammar_check import BOUNDS, check_grammar
from server.generation.json_schema_grammar import schema_grammar
from server.generation.pipeline import GenerationPipeline
from server.generation.plan import GenerationPlan, ParamNames, Turn
from server.metrics import RequestRecord
from server.models.registry import ModelRegistry
from tests.fakes import FakeEngine, fake_spec

WHERE = "structured_outputs.regex"

# -- an oracle: the (non-recursive) grammars built here, as Python regular expressions --------------------------
_TOKEN = re.compile(
    r'\s*(?:(?P<literal>"(?:[^"\\]|\\.)*")|(?P<cls>\[(?:[^\]\\]|\\.)*\])|(?P<name>[a-zA-Z0-9-]+)'
    r"|(?P<repeat>\{\d+(?:,\d*)?\}|[*+?])|(?P<punct>[()|]))"
)
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)")
_SIMPLE = {"n": "\n", "r": "\r", "t": "\t"}


def _chars(body: str) -> list[str]:
    """The characters of a GBNF literal's or class's body, escapes decoded (code points past U+10FFFF kept as None)."""
    out: list[str] = []
    pos = 0
    while pos < len(body):
        escape = _ESCAPE.match(body, pos)
        if escape is None:
            out.append(body[pos])
            pos += 1
            continue
        code = escape.group(1)
        if code[0] in "xuU" and len(code) > 1:
            value = int(code[1:], 16)
            out.append(chr(value) if value <= 0x10FFFF else None)
        else:
            out.append(_SIMPLE.get(code, code))
        pos = escape.end()
    return out


def _class(text: str) -> str:
    negated = text.startswith("[^")
    chars = _chars(text[2 if negated else 1 : -1])
    ranges, i = [], 0
    while i < len(chars):
        if i + 2 < len(chars) and chars[i + 1] == "-":
            low, high = chars[i], chars[i + 2]
            ranges.append((low, high if high is not None else chr(0x10FFFF)))
            i += 3
        else:
            ranges.append((chars[i], chars[i]))
            i += 1
    body = "".join(
        re.escape(low) if low == high else f"{re.escape(low)}-{re.escape(high)}" for low, high in ranges if low
    )
    return f"[{'^' if negated else ''}{body}]"


def python_regex(grammar: str) -> str:
    rules = dict(line.split(" ::= ", 1) for line in grammar.splitlines())

    def expression(name: str) -> str:
        out = []
        for token in _TOKEN.finditer(rules[name]):
            if token["literal"]:
                out.append("(?:" + re.escape("".join(_chars(token["literal"][1:-1]))) + ")")
            elif token["cls"]:
                out.append(_class(token["cls"]))
            elif token["name"]:
                out.append("(?:" + expression(token["name"]) + ")")
            elif token["repeat"]:
                out.append(token["repeat"])
            else:
                out.append({"(": "(?:", ")": ")", "|": "|"}[token["punct"]])
        return "".join(out)

    return expression("root")


REGEXES = {
    r"^[A-Z]{2,3}-\d{1,3}(x|yz)?$": ["AB-1", "ABC-123yz", "AB-1x", "A-1", "ABCD-1", "AB-1234", "ab-1", "AB-1y"],
    r"(yes|no|maybe)": ["yes", "no", "maybe", "", "yesno", "Yes"],
    r"\w+@\w+\.com": ["a@b.com", "a_1@x2.com", "@b.com", "a@b.org", "a b@c.com"],
    r"\d{4}-\d{2}-\d{2}": ["2024-01-31", "2024-1-31", "20240131"],
    r'say "hi"\\ok\n': ['say "hi"\\ok\n', 'say "hi"\\ok', "say hi"],
    r"[^a-c\n]{2}.\s\S": ["de\tx y", "de! !", "ab x y", "dd\n x", "xy\x00 q"],
    r"(?:ab)*c+?[\-\]]": ["c-", "ababcc]", "abc", "abac-"],
    r"\u00e9t[\u00e0-\u00ff]\x41\.": ["étéA.", "étàA.", "etéA.", "étéa."],
    r"\W\D[^\d\s]": ["!a-", " x_", "a1b", "!!1"],
    r"a|": ["a", "", "aa"],
    "": ["", "a"],
    r"^\$$": ["$", ""],
    r".*": ["", "anything at all", "two\nlines"],
}


@pytest.mark.parametrize("regex", list(REGEXES))
def test_a_regex_grammar_admits_exactly_what_the_regex_matches_whole(regex):
    admitted = re.compile(python_regex(regex_grammar(regex, WHERE)))
    for text in REGEXES[regex]:
        expected = re.fullmatch(regex, text, re.ASCII) is not None
        assert (admitted.fullmatch(text) is not None) == expected, (regex, text)


def test_a_regex_grammar_is_plain_text_not_json():
    grammar = regex_grammar(r'"\\', WHERE)
    assert grammar.splitlines()[0] == 'root ::= ("\\"" "\\\\")'


@pytest.mark.parametrize(
    ("regex", "fragment"),
    [
        ("a" * 1001, "at most 1000"),
        ("a{0,1001}", "at most 1000"),
        ("a{999}" * 11, "add up"),
        ("(" * 33 + "a" + ")" * 33, "nest deeper than 32"),
        ("(a*)*", "match nothing"),
        ("(?=a)b", "lookaround"),
        (r"(a)\1", "escape"),
        ("a^b", "anchors"),
        (r"\ud800", "surrogate"),
        ("[a-", "ends too early"),
        ("a{3,2}", "reversed"),
        ("(ab", "ends too early"),
        ("a)", "unexpected"),
    ],
)
def test_a_regex_past_a_bound_or_outside_the_subset_is_a_400_naming_the_field(regex, fragment):
    with pytest.raises(InvalidRequestError) as caught:
        regex_grammar(regex, WHERE)
    assert caught.value.param == WHERE and fragment in caught.value.message


@pytest.mark.parametrize(
    ("pattern", "fragment"), [("^" + "(" * 400 + "a" + ")" * 400 + "$", "nest"), (r"^\ud800$", "surrogate")]
)
def test_schema_patterns_share_the_nesting_bound_and_refuse_surrogates(pattern, fragment):
    # Before: Python's recursion limit (a 500), and a grammar that could not be encoded for llama.cpp (a 500).
    with pytest.raises(InvalidRequestError) as caught:
        schema_grammar({"type": "string", "pattern": pattern}, "response_format.json_schema.schema")
    assert caught.value.param == "response_format.json_schema.schema.pattern" and fragment in caught.value.message


def test_choices_are_literal_strings_escaped_for_gbnf():
    choices = ["yes", 'say "hi"', "back\\slash", "two\nlines", "tab\there", "é ✓", "", "yes", "\x01"]
    admitted = re.compile(python_regex(choice_grammar(choices, "structured_outputs.choice")))
    for text in [*choices, "ye", "yes ", "no", "say hi"]:
        assert (admitted.fullmatch(text) is not None) == (text in choices), text
    assert choice_grammar(["a", "b", "a"], "c") == 'root ::= "a" | "b"\n'


@pytest.mark.parametrize(
    ("choices", "param", "fragment"),
    [
        ([], "c", "at least one"),
        (["x"] * (CHOICE_BOUNDS.max_choices + 1), "c", "at most 128"),
        (["ok", "x" * (CHOICE_BOUNDS.max_choice_chars + 1)], "c[1]", "at most 1000"),
        (["x" * 1000] * 17, "c", "at most 16000"),
    ],
)
def test_choices_past_a_bound_are_a_400(choices, param, fragment):
    with pytest.raises(InvalidRequestError) as caught:
        choice_grammar(choices, "c")
    assert caught.value.param == param and fragment in caught.value.message


def test_the_largest_choice_lists_stay_within_a_client_grammars_bounds():
    # 128 choices, 16,000 characters, every one a control character (escaped in four) or unique by a non-ASCII one
    worst = [chr(0x4E00 + i) + "\x01" * 124 for i in range(128)]
    assert sum(map(len, worst)) == CHOICE_BOUNDS.max_total_chars
    grammar = choice_grammar(worst, "c")
    check_grammar(grammar, "c")
    assert len(grammar.encode()) <= BOUNDS.max_bytes


GOOD_GRAMMARS = [
    'root ::= "a"',
    'root ::= answer\nanswer ::= ("yes" | "no") "."  # a comment\n',
    'root ::= [a-z\\]]{2,5} [^"\\\\\\n]* "\\x41\\u00e9\\U0001F600"',
    'root ::= ("a"\n  | "b")+ .? !<[5]> <[12]>',
    'root ::= -a-\r\n-a- ::= ( "x" ){ 2 , 3 } "y"{3,}',
    "root ::= " + " | ".join(['"x"'] * 128),
    "root ::= " + "(" * 32 + '"a"' + ")" * 32,
    'root ::= ("a"){1000} ("b"){0,1000} ' + " ".join(['"c"{1000}'] * 3),  # counts (m and n) add up to 9,000
]


@pytest.mark.parametrize("grammar", GOOD_GRAMMARS)
def test_grammars_in_llama_cpps_syntax_within_the_bounds_are_accepted(grammar):
    assert client_grammar(grammar, "grammar") == grammar


@pytest.mark.parametrize(
    ("grammar", "fragment"),
    [
        ('r ::= "a"', "no `root`"),
        ("", "no `root`"),
        ("root ::= answer", "'answer' is used but never defined (line 1, column 10)"),
        ('root = "a"', "'::='"),
        ('root ::= my_rule\nmy_rule ::= "a"', "unexpected '_'"),
        ('root ::= "a"\n  | "b"', "line 2"),
        ('root ::= "abc', "string is not closed"),
        ("root ::= [a-z", "class is not closed"),
        ('root ::= "\\q"', "unknown escape"),
        ('root ::= "\\x4"', "unknown escape"),
        ('root ::= ("a"', "')'"),
        ('root ::= !"a"', "'<'"),
        ("root ::= <[12x]>", "<[digits]>"),
        ('root ::= ""*', "nothing to repeat"),
        ('root ::= "a"{3}{4}', "repeated directly"),
        ('root ::= "a"{5,2}', "reversed"),  # llama.cpp would count to 2^64
        ('root ::= "a"{0,1001}', "at most 1000"),  # llama.cpp would drop a maximum above 2000
        ('root ::= "a"{99999999999}', "too large"),
        ("root ::= " + " ".join(['"c"{1000}'] * 11), "add up"),
        ('root ::= "' + "a" * 300 + '"{1000}', "expand to more than"),
        ("root ::= " + "(" * 33 + '"a"' + ")" * 33, "nest deeper than 32"),
        ("root ::= " + " | ".join(['"x"'] * 129), "more than 128 alternatives"),
        ('root ::= "a\x00"', "NUL"),
        ("root ::= " + '"' + "a" * BOUNDS.max_bytes + '"', "larger than"),
    ],
)
def test_a_grammar_with_a_syntax_error_or_past_a_bound_is_a_400_that_says_where(grammar, fragment):
    with pytest.raises(InvalidRequestError) as caught:
        client_grammar(grammar, "structured_outputs.grammar")
    assert caught.value.param == "structured_outputs.grammar" and fragment in caught.value.message


class RefusingCompiler(FakeEngine):
    """llama.cpp's answer to a grammar it cannot parse (left recursion, say): its 400, naming response_format."""

    async def compile_grammar(self, grammar: str) -> None:
        raise InvalidRequestError("The output schema could not be turned into a grammar.", param="response_format")


def test_a_grammar_llama_cpp_refuses_is_a_400_naming_the_field_that_asked_for_it():
    engine = RefusingCompiler()
    pipeline = GenerationPipeline(ModelRegistry([fake_spec("m")], lambda spec: engine))
    plan = GenerationPlan(
        model="m",
        turns=(Turn("user", "Hi"),),
        grammar='root ::= x\nx ::= x "a" | "b"\n',
        params=ParamNames(output_grammar="structured_outputs.grammar"),
    )
    with pytest.raises(InvalidRequestError) as caught:
        asyncio.run(pipeline.start(plan, RequestRecord(request_id="t", method="POST", path="/")))
    assert caught.value.param == "structured_outputs.grammar" and "left-recursive" in caught.value.message
    assert engine.requests == []  # refused before admission
