"""Tool calls given out as they stream (server/generation/tool_dialects/preview.py, json_canon.py): every family's
calls begin before the reply ends and their arguments come a piece at a time; the pieces joined equal the reply read
whole; nothing given out is taken back; a reply cut short or malformed after its calls began keeps them."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.engine.base import GenerationDelta
from server.generation.reader import ReplyReader
from server.generation.reply import ChoiceEnd, TextPiece, ToolCallArguments, ToolCallStart
from server.generation.tool_dialects import CallFormat
from server.generation.tool_dialects.json_canon import CanonicalJSON
from server.generation.tools import parse_calls
from tests.generation.test_tool_dialects import DS_BEGIN, DS_CALL, DS_END, DS_SEP, FAMILIES

DS_CALLS_END = "<｜tool▁calls▁end｜>"  # noqa: RUF001

FUNCTIONS = {"get_weather": {"type": "object"}, "get_time": {"type": "object"}}
ARGUMENTS = {"city": 'Par"is\\ é 😀', "days": [1, 2.5, -0, 1e5, True, None], "nested": {"a": {}}}
WEATHER = '{"name": "get_weather", "arguments": %s}'


def read(text: str, family: str, pieces: list[str] | None = None, reason: str = "stop", most: int = 8):
    """The reply events of `text` streamed in `pieces` (one character each by default)."""
    pieces = pieces if pieces is not None else list(text)
    assert "".join(pieces) == text
    reader = ReplyReader(CallFormat(FUNCTIONS, family, most), 1)
    per_delta = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        delta = GenerationDelta(piece, i + 1, reason if last else None)  # type: ignore[arg-type]
        per_delta.append(list(reader.push(0, delta)))
    return per_delta


def calls_of(events) -> list[tuple[str, str]]:
    calls: list[list[str]] = []
    for event in events:
        if isinstance(event, ToolCallStart):
            calls.append([event.name, ""])
        elif isinstance(event, ToolCallArguments):
            calls[-1][1] += event.text
    return [(name, arguments) for name, arguments in calls]


def flat(per_delta):
    return [event for events in per_delta for event in events]


def splits(text: str, seed: int, least: int = 1) -> list[str]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(least, least + 12))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def two_calls(family: str) -> str:
    """The family's sample reply, with a second call (get_time) after the first, as the family writes two."""
    arguments = json.dumps(ARGUMENTS, ensure_ascii=False, indent=1)
    v3 = f"{DS_CALL}function{DS_SEP}{{name}}\n```json\n{{arguments}}\n```{DS_END}"
    v31 = f"{DS_CALL}{{name}}{DS_SEP}{{arguments}}{DS_END}"
    return {
        "deepseek": DS_BEGIN
        + v3.format(name="get_weather", arguments=arguments)
        + "\n"
        + v3.format(name="get_time", arguments="{}")
        + DS_CALLS_END,
        "deepseek_v31": DS_BEGIN
        + v31.format(name="get_weather", arguments=arguments)
        + v31.format(name="get_time", arguments="{}")
        + DS_CALLS_END,
        "llama3": f'{{"name": "get_weather", "parameters": {arguments}}}; {{"name": "get_time", "parameters": {{}}}}',
        "mistral": f'[TOOL_CALLS][{WEATHER % arguments}, {{"name": "get_time", "arguments": {{}}}}]',
        "phi4mini": f'<|tool_call|>[{WEATHER % arguments}, {{"name": "get_time", "arguments": {{}}}}]<|/tool_call|>',
        "hermes": f"<tool_call>\n{WEATHER % arguments}\n</tool_call>\n"
        + '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
        "generic": f'{{"tool_calls": [{WEATHER % arguments}, {{"name": "get_time", "arguments": {{}}}}]}}',
    }[family]


STREAMED = ["llama3", "mistral", "phi4mini", "hermes", "generic", "deepseek", "deepseek_v31"]


@pytest.mark.parametrize("family", STREAMED)
@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_every_family_streams_its_calls_and_they_join_into_the_reply_read_whole(family, seed):
    text = two_calls(family)
    dialect_name = "deepseek" if family.startswith("deepseek") else family
    whole = parse_calls(text, CallFormat(FUNCTIONS, dialect_name))
    assert whole is not None
    per_delta = read(text, dialect_name, None if seed is None else splits(text, seed, least=20))
    events = flat(per_delta)
    assert calls_of(events) == [(c.name, c.arguments) for c in whole]
    assert not any(isinstance(e, TextPiece) for e in events)
    assert events[-1] == ChoiceEnd(0, "tool_calls", len(per_delta))
    before_end = flat(per_delta[:-1])
    assert isinstance(before_end[0], ToolCallStart)  # the first call began before the reply ended
    if seed is None:  # one character at a time: the arguments came in many pieces, each as soon as final
        pieces = [e.text for e in before_end if isinstance(e, ToolCallArguments)]
        assert len(pieces) >= 10
    ids = [e.id for e in events if isinstance(e, ToolCallStart)]
    assert len(set(ids)) == len(ids)


def test_an_escape_is_never_cut_and_each_piece_is_final():
    text = FAMILIES["hermes"][1].replace('"Paris"', '"P\\u00e9ris \\"q\\" \\\\ \\ud83d\\ude00"')
    per_delta = read(text, "hermes")
    pieces = [e.text for e in flat(per_delta) if isinstance(e, ToolCallArguments)]
    joined = ""
    for piece in pieces:
        joined += piece
        # Each prefix is the start of the final text, and never ends inside an escape.
        assert not joined.endswith("\\") or joined.endswith("\\\\")
        assert not any(joined.endswith("\\u" + "0" * n) for n in range(4))
    assert json.loads(joined) == {"city": 'Péris "q" \\ 😀'}
    assert joined == json.dumps({"city": 'Péris "q" \\ 😀'})


def test_a_reply_cut_short_inside_the_arguments_keeps_its_call_with_what_was_written():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'
    events = flat(read(text, "hermes", reason="length"))
    assert calls_of(events) == [("get_weather", '{"city": "Par')]
    assert events[-1].reason == "length"


def test_malformed_arguments_after_the_call_began_keep_it_as_given():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris",, }}\n</tool_call> and more'
    events = flat(read(text, "hermes"))
    assert calls_of(events) == [("get_weather", '{"city": "Paris", ')]
    assert events[-1].reason == "tool_calls"
    assert not any(isinstance(e, TextPiece) for e in events)


def test_calls_that_cannot_stream_are_read_whole_at_the_end():
    quoted = '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}\n</tool_call>'
    per_delta = read(quoted, "hermes")
    assert flat(per_delta[:-1]) == []
    assert calls_of(per_delta[-1]) == [("get_weather", '{"city": "Paris"}')]
    reversed_keys = '<tool_call>\n{"arguments": {"city": "Paris"}, "name": "get_weather"}\n</tool_call>'
    assert calls_of(flat(read(reversed_keys, "hermes"))) == [("get_weather", '{"city": "Paris"}')]


def test_a_call_that_cannot_stream_stops_the_stream_and_the_calls_keep_their_order():
    cannot = '<tool_call>\n{"arguments": {"city": "Oslo"}, "name": "get_weather"}\n</tool_call>\n'
    can = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'
    per_delta = read(cannot + can, "hermes")
    assert flat(per_delta[:-1]) == []
    assert calls_of(per_delta[-1]) == [("get_weather", '{"city": "Oslo"}'), ("get_time", '{"zone": "CET"}')]
    per_delta = read(can + "\n" + cannot, "hermes")  # the first streams; the second comes at the end
    assert calls_of(flat(per_delta[:-1])) == [("get_time", '{"zone": "CET"}')]
    assert calls_of(flat(per_delta)) == [("get_time", '{"zone": "CET"}'), ("get_weather", '{"city": "Oslo"}')]


def test_an_object_inside_the_arguments_is_never_taken_for_a_call():
    inner = '{"name": "get_weather", "arguments": {"city": "WRONG"}}'
    text = f'<tool_call>\n{{"arguments": {{"city": "x", "note": {inner}}}, "name": "get_weather"}}\n</tool_call>'
    assert calls_of(flat(read(text, "hermes"))) == [
        ("get_weather", json.dumps({"city": "x", "note": json.loads(inner)}))
    ]
    answer = f'{{"answer": "plan", "steps": [{inner}]}}'  # a JSON answer, not the generic syntax's calls: text
    events = flat(read(answer, "generic"))
    assert not any(isinstance(e, ToolCallStart) for e in events)
    assert "".join(e.text for e in events if isinstance(e, TextPiece)) == answer


def test_a_reply_that_is_not_json_stays_text_and_raw_newlines_in_strings_are_read():
    quoted = '<tool_call>\n{"name": "get_weather", "arguments": {\'city\': \'Paris\'}}\n</tool_call>'
    events = flat(read(quoted, "hermes"))
    assert not any(isinstance(e, ToolCallStart) for e in events)
    assert "".join(e.text for e in events if isinstance(e, TextPiece)) == quoted
    code = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "line 1\nline 2"}}\n</tool_call>'
    assert calls_of(flat(read(code, "hermes"))) == [("get_weather", '{"city": "line 1\\nline 2"}')]


def test_a_call_of_no_given_function_is_text():
    text = '<tool_call>\n{"name": "launch", "arguments": {}}\n</tool_call>'
    events = flat(read(text, "hermes"))
    assert not any(isinstance(e, ToolCallStart) for e in events)
    assert "".join(e.text for e in events if isinstance(e, TextPiece)) == text


def test_repeated_keys_keep_the_arguments_as_streamed():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "A", "city": "B"}}\n</tool_call>'
    assert calls_of(flat(read(text, "hermes"))) == [("get_weather", '{"city": "A", "city": "B"}')]


def test_no_more_calls_stream_than_the_most_allowed():
    text = two_calls("hermes")
    events = flat(read(text, "hermes", most=1))
    assert [name for name, _ in calls_of(events)] == ["get_weather"]


def test_text_before_the_calls_comes_first():
    text = "Let me check.\n" + FAMILIES["hermes"][1]
    events = flat(read(text, "hermes"))
    assert isinstance(events[0], TextPiece)
    assert "".join(e.text for e in events if isinstance(e, TextPiece)) == "Let me check."
    assert calls_of(events) == [("get_weather", '{"city": "Paris"}')]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=4), ascii_=st.booleans(), seed=st.integers())
def test_canonical_json_equals_json_dumps_of_the_value_read_whole(value, ascii_, seed):
    text = json.dumps(value, ensure_ascii=ascii_, indent=random.Random(seed).choice([None, 0, 2]))
    reader, out = CanonicalJSON(), []
    for piece in splits(text, seed) if len(text) > 1 else [text]:
        given_, _ = reader.push(piece)
        out.append(given_)
    assert reader.done and "".join(out) == json.dumps(json.loads(text))


GIVEN_BEFORE_FAILING = {
    '{"a": 1,}': '{"a": 1, ',
    '{"a" 1}': '{"a"',
    '{"a": tru}': '{"a": ',
    '{"a": 01}': '{"a": ',
    '{"a": 1e400}': '{"a": ',
    '{"a": "\\x"}': '{"a": "',
    '{"a": NaN}': '{"a": ',
    '{"a": [1, }': '{"a": [1, ',
}


@pytest.mark.parametrize("text", list(GIVEN_BEFORE_FAILING))
def test_canonical_json_stops_where_the_text_stops_being_json(text):
    reader = CanonicalJSON()
    given_, _ = reader.push(text)
    assert reader.failed and not reader.done
    assert given_ == GIVEN_BEFORE_FAILING[text]


@pytest.mark.parametrize(
    "text",
    [
        '{"n": [-0, -0.0, 1E5, 1e+2, 1.0, 1.5e-3, 0e0, 5e-324, 1e-400, 12345678901234567890123]}',
        '{"s": "\\uD83D\\uDE00 \\ud83d \\u0000 \\u007f \\/ \\b\\f\\n\\r\\t é 😀 \u007f", '
        + '"t": true, "f": false, "z": null}',
        '{ "a" :\n[ { } , [ ] ] }',
        '{"raw": "a\tb\nc"}',
    ],
)
def test_canonical_json_reads_every_form_as_python_does(text):
    for size in (1, 2, 5, len(text)):
        reader, out = CanonicalJSON(), []
        for i in range(0, len(text), size):
            out.append(reader.push(text[i : i + size])[0])
        assert reader.done and "".join(out) == json.dumps(json.loads(text, strict=False))


def test_canonical_json_refuses_nesting_past_its_bound():
    reader = CanonicalJSON()
    reader.push('{"a": ' + "[" * 300)
    assert reader.failed
