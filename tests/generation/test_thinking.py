"""A reasoning model's reply split into thinking and answer as it streams, what a request's thinking becomes for
its model, and the output grammar behind the thinking block."""

from __future__ import annotations

import re

import pytest

from server.engine.base import ReasoningFormat
from server.errors import InvalidRequestError
from server.generation.plan import GenerationPlan, ParamNames, ReasoningRequest, Turn
from server.generation.thinking import ThinkingSplitter, thinking_of
from server.generation.thinking_grammar import _until, with_thinking
from tests.generation.test_constraint_grammars import python_regex

THINK = ReasoningFormat("<think>", "</think>", 100, "enable_thinking")
NO_SWITCH = ReasoningFormat("<think>", "</think>", 100, None)


def split(pieces: list[str], start: str = "before") -> tuple[str, str, list[tuple[bool, str]]]:
    splitter = ThinkingSplitter(THINK, start)  # type: ignore[arg-type]
    out = [piece for text in pieces for piece in splitter.push(text)] + splitter.finish()
    thinking = "".join(text for is_thinking, text in out if is_thinking)
    return thinking, "".join(text for is_thinking, text in out if not is_thinking), out


def test_markers_split_across_pieces_never_leak():
    pieces = ["<", "thi", "nk>\nLet me", " think.\n</", "th", "ink>", "\n\nThe answer", " is 4."]
    thinking, answer, _ = split(pieces)
    assert (thinking, answer) == ("Let me think.", "The answer is 4.")


def test_every_character_on_its_own_gives_the_same_split():
    text = "<think>\nStep one.\nStep two.\n</think>\n\nDone <think> not here."
    assert split(list(text))[:2] == ("Step one.\nStep two.", "Done <think> not here.")


def test_only_a_possible_marker_is_held_back():
    splitter = ThinkingSplitter(THINK, "inside")
    assert splitter.push("a < b") == [(True, "a < b")]
    assert splitter.push(" and </t") == [(True, " and")]  # " </t" might begin the end marker
    assert splitter.push("able>") == [(True, " </table>")]


def test_a_reply_that_starts_inside_the_block():
    assert split(["2 + 2 is 4.", "</think>", "4"], start="inside")[:2] == ("2 + 2 is 4.", "4")


def test_a_reply_that_never_ends_its_thinking_is_all_thinking():
    thinking, answer, _ = split(["<think>", "still going", "\n", "</thi"])
    assert (thinking, answer) == ("still going\n</thi", "")


def test_a_reply_without_a_block_is_all_answer():
    assert split(["  Hello", " <think>"])[:2] == ("", "  Hello <think>")
    assert split(["  "])[:2] == ("", "  ")


def test_blanks_inside_the_thinking_are_kept():
    assert split(["<think>a\n\n", "b\n", "</think>c"])[:2] == ("a\n\nb", "c")


def plan(reasoning: ReasoningRequest | None, **fields) -> GenerationPlan:
    return GenerationPlan(model="m", turns=(Turn("user", "Hi"),), reasoning=reasoning, **fields)


def test_what_a_request_asks_becomes_the_switch_and_a_budget():
    default = thinking_of(plan(None), THINK)
    assert (default.template_vars, default.budget_tokens, default.requested) == ({}, 100, False)
    off = thinking_of(plan(ReasoningRequest(enabled=False)), THINK)
    assert (off.template_vars, off.budget_tokens) == ({"enable_thinking": False}, 0)
    low = thinking_of(plan(ReasoningRequest(enabled=True, budget_scale=0.5)), THINK)
    assert (low.template_vars, low.budget_tokens, low.requested) == ({"enable_thinking": True}, 50, True)
    exact = thinking_of(plan(ReasoningRequest(enabled=True, budget_tokens=7)), NO_SWITCH)
    assert (exact.template_vars, exact.budget_tokens) == ({}, 7)
    assert thinking_of(plan(ReasoningRequest(enabled=True, budget_scale=None)), THINK).budget_tokens is None
    assert thinking_of(plan(None), None) is None
    assert thinking_of(plan(ReasoningRequest(enabled=False)), None) is None  # nothing to turn off
    assert thinking_of(GenerationPlan(model="m", prompt="raw"), THINK) is None


@pytest.mark.parametrize(
    ("reasoning", "fmt", "code"),
    [
        (ReasoningRequest(enabled=False), NO_SWITCH, None),  # a model that always thinks
        (ReasoningRequest(enabled=True), None, "unsupported_parameter"),  # a model that does not reason
    ],
)
def test_what_a_model_cannot_do_is_a_400_naming_the_field(reasoning, fmt, code):
    with pytest.raises(InvalidRequestError) as caught:
        thinking_of(plan(reasoning, params=ParamNames(reasoning="thinking")), fmt)
    assert caught.value.param == "thinking" and caught.value.code == code


def test_where_the_reply_begins_is_read_from_the_prompt():
    thinking = thinking_of(plan(None), THINK)
    assert thinking.start("<|im_start|>assistant\n") == "before"
    assert thinking.start("<｜Assistant｜><think>\n") == "inside"  # noqa: RUF001
    assert thinking.start("<|im_start|>assistant\n<think>\n\n</think>\n\n") is None


def _matches(marker: str, text: str) -> bool:
    """Run `text` through the rules `_until` writes (as llama.cpp would read them)."""
    lines: list[str] = []
    _until(marker, "t", lines)
    rules: dict[str, list[tuple[str, str, str | None]]] = {}
    for line in lines:
        name, body = line.split(" ::= ")
        for alternative in body.split(" | "):
            found = re.fullmatch(r'(?:"(.)"|\[\^(.*)\])(?: (\S+))?', alternative)
            assert found, alternative
            literal, excluded, then = found.groups()
            excluded = re.sub(r"\\x([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), excluded or "")
            rules.setdefault(name, []).append(("is" if literal else "not", literal or excluded, then))
    state: str | None = "t-0"
    for char in text:
        if state is None:
            return False
        state = next((then or None for kind, chars, then in rules[state] if (char == chars) == (kind == "is")), "stuck")
        if state == "stuck":
            return False
    return state is None


@pytest.mark.parametrize("marker", ["</think>", "aab", "abab"])
def test_the_thinking_text_rules_end_at_the_first_end_marker(marker):
    for text in ["", "x", marker, f"hello {marker}", f"{marker[:-1]}{marker}", f"{marker}{marker}", marker * 3]:
        first = text.find(marker)
        assert _matches(marker, text) == (first >= 0 and first + len(marker) == len(text)), text
    assert _matches("aab", "aaab") and not _matches("abab", "ababab") and _matches("abab", "abaabab")


def test_the_answer_grammar_goes_behind_the_block_with_its_root_renamed():
    answer = 'root ::= "{" inner "}" # root\ninner ::= [a-z]* | "root" | root\n'
    wrapped = with_thinking(answer, "<think>", "</think>", opened=False, required=True)
    assert 'thinking-answer ::= "{" inner "}" # root\ninner ::= [a-z]* | "root" | thinking-answer' in wrapped
    assert wrapped.endswith('root ::= "<think>" thinking-0 [ \\x09\\x0A\\x0D]{0,8} thinking-answer\n')
    optional = with_thinking(answer, "<think>", "</think>", opened=False, required=False)
    assert 'root ::= ("<think>" thinking-0 [ \\x09\\x0A\\x0D]{0,8})? thinking-answer' in optional
    assert "root ::= thinking-0 " in with_thinking(answer, "<think>", "</think>", opened=True, required=False)
    clash = with_thinking("root ::= thinking-0\nthinking-0 ::= [0-9]\n", "<a>", "</a>", opened=True, required=False)
    assert "thinking1-answer ::= thinking-0\n" in clash and "root ::= thinking1-0 " in clash


# -- a block opened implicitly (DeepSeek-R1's first templates: no <think> in the prompt) --------------------------
EARLY = ReasoningFormat("<think>", "</think>", 100, None, implicit_start=True)
EARLY_REPLY = "I think...</think>The answer"


def split_early(pieces: list[str]) -> tuple[str, str]:
    splitter = ThinkingSplitter(EARLY, "inside")
    out = [piece for text in pieces for piece in splitter.push(text)] + splitter.finish()
    return "".join(t for is_thinking, t in out if is_thinking), "".join(t for is_thinking, t in out if not is_thinking)


def chunked(text: str, *sizes: int) -> list[str]:
    """`text` cut into pieces of these sizes in turn (odd splits: markers fall across pieces)."""
    pieces, at, turn = [], 0, 0
    while at < len(text):
        size = sizes[turn % len(sizes)]
        pieces.append(text[at : at + size])
        at, turn = at + size, turn + 1
    return pieces


@pytest.mark.parametrize("sizes", [(1,), (2,), (3,), (5, 1), (4, 7), (len(EARLY_REPLY),)])
@pytest.mark.parametrize("lead", ["", "\n", "<think>", "\n<think>\n\n", "  <think>"])
def test_an_implicit_block_splits_at_its_end_marker_a_start_marker_written_anyway_dropped(sizes, lead):
    assert split_early(chunked(lead + EARLY_REPLY, *sizes)) == ("I think...", "The answer")


def test_an_implicit_block_never_closed_is_all_thinking():
    assert split_early(["I think", " on and on"]) == ("I think on and on", "")
    assert split_early(["<think>", "\nstill"]) == ("still", "")
    assert split_early(["\n", "<thi"]) == ("<thi", "")  # what might have become <think>, then the reply ended
    assert split_early(["\n", "  ", "<think>", "\n"]) == ("", "")
    assert split_early(["</think>", "At once."]) == ("", "At once.")


def test_only_a_leading_start_marker_of_an_implicit_block_is_dropped():
    assert split_early(["Hm <think> is", " a tag</think>Yes"]) == ("Hm <think> is a tag", "Yes")
    assert split_early(["<think><think>x</think>y"]) == ("<think>x", "y")
    assert split_early(["<thinking", " aloud</think>ok"]) == ("<thinking aloud", "ok")


def test_an_implicit_block_begins_inside_unless_the_prompt_closed_it():
    thinking = thinking_of(plan(None), EARLY)
    assert thinking.start("<｜User｜>Hi<｜Assistant｜>") == "inside"  # noqa: RUF001
    assert thinking.start("<｜Assistant｜><think>\n") == "inside"  # noqa: RUF001
    assert thinking.start("<|im_start|>assistant\n<think>\n\n</think>\n\n") is None
    budget = thinking.budget("inside")
    assert budget is not None and budget.inside and budget.implicit_start and budget.tokens == 100
    with pytest.raises(InvalidRequestError) as caught:  # no switch: it cannot stop thinking
        thinking_of(plan(ReasoningRequest(enabled=False), params=ParamNames(reasoning="reasoning_effort")), EARLY)
    assert caught.value.param == "reasoning_effort" and "always thinks" in str(caught.value)


def _admits(grammar: str, text: str) -> bool:
    """Whether `text` is in the language of a grammar `with_thinking` wrote: its block's rules (right-recursive,
    which the regex oracle cannot follow) are read as "any text up to the first </think>"."""
    lines = [line for line in grammar.splitlines() if not re.match(r"thinking-\d+ ::= ", line)]
    lines.append('thinking-0 ::= "\x01"')
    block = "(?:(?!</think>)[\\s\\S])*</think>"
    return re.fullmatch(python_regex("\n".join(lines)).replace("(?:\x01)", block), text) is not None


@pytest.mark.parametrize("required", [True, False])
def test_an_implicit_block_grammar_takes_a_start_marker_or_none_then_the_block_then_the_answer(required):
    grammar = with_thinking('root ::= "{}"\n', "<think>", "</think>", opened=True, required=required, implicit=True)
    assert 'root ::= ([ \\x09\\x0A\\x0D]{0,8} "<think>")? thinking-0 ' in grammar
    for text in ["I think</think>{}", "<think>I think</think>\n\n{}", "\n<think>\n</think>{}", "</think>{}"]:
        assert _admits(grammar, text), text
    for text in ["I think{}", "<think>I think", "I think</think>x", "{}"]:
        assert not _admits(grammar, text), text
    explicit = with_thinking('root ::= "{}"\n', "<think>", "</think>", opened=False, required=True)
    assert _admits(explicit, "<think>a</think>{}") and not _admits(explicit, "a</think>{}")  # the oracle reads both
