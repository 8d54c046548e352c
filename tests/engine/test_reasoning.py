"""A reasoning model's thinking in the engine: its markers and switch found, and the end marker forced once the
thinking block has run its budget of tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError, ReasoningSpec, load_models_file
from server.engine.base import ReasoningFormat, ThinkingBudget
from server.engine.reasoning import ThinkingLimit, reasoning_format

QWEN3_LIKE = "{{ '<|im_start|>assistant\\n' }}{% if enable_thinking is false %}<think>\\n\\n</think>{% endif %}"
R1_LIKE = "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"  # noqa: RUF001
PLAIN = "{% for m in messages %}{{ m.content }}{% endfor %}"
END = 99  # the end marker's one token


def test_the_format_is_found_in_the_template_or_configured():
    assert reasoning_format(None, QWEN3_LIKE) == ReasoningFormat("<think>", "</think>", 2048, "enable_thinking")
    assert reasoning_format(None, R1_LIKE) == ReasoningFormat("<think>", "</think>", 2048, None)
    assert reasoning_format(None, PLAIN) is None
    assert reasoning_format(False, QWEN3_LIKE) is None  # configured off
    configured = ReasoningSpec(start="<reason>", end="</reason>", budget_tokens=64, switch=None)
    assert reasoning_format(configured, PLAIN) == ReasoningFormat("<reason>", "</reason>", 64, None)
    assert reasoning_format(ReasoningSpec(), QWEN3_LIKE).switch == "enable_thinking"  # "auto"
    assert reasoning_format(ReasoningSpec(switch="thinking"), PLAIN).switch == "thinking"


def run(limit: ThinkingLimit, pieces: list[str]) -> list[str]:
    """The reply the engine writes: each piece a token, the end marker's token where it is forced."""
    out = []
    for piece in pieces:
        while (forced := limit.forced()) is not None:
            limit.push(forced, b"</think>")
            out.append("</think>")
        limit.push(0, piece.encode())
        out.append(piece)
    return out


def test_the_end_is_forced_after_the_budget_when_the_prompt_opened_the_block():
    limit = ThinkingLimit(ThinkingBudget("<think>", "</think>", tokens=3, inside=True), [END])
    assert run(limit, ["a", "b", "c", "d", "e"]) == ["a", "b", "c", "</think>", "d", "e"]
    assert not limit.thinking


def test_a_block_the_reply_opens_counts_from_its_start_marker():
    limit = ThinkingLimit(ThinkingBudget("<think>", "</think>", tokens=2), [END])
    assert run(limit, ["\n", "<thi", "nk>", "x", "y"]) == ["\n", "<thi", "nk>", "x", "</think>", "y"]


def test_nothing_is_forced_when_the_block_ends_in_time_or_never_opens():
    limit = ThinkingLimit(ThinkingBudget("<think>", "</think>", tokens=4, inside=True), [END])
    assert run(limit, ["a", "</th", "ink>", "b", "c", "d", "e"]) == ["a", "</th", "ink>", "b", "c", "d", "e"]
    limit = ThinkingLimit(ThinkingBudget("<think>", "</think>", tokens=1), [END])
    assert run(limit, ["Hello", "<think>", "a", "b"]) == ["Hello", "<think>", "a", "b"]  # not at the start: text


def test_a_marker_of_several_tokens_is_forced_token_by_token():
    limit = ThinkingLimit(ThinkingBudget("<think>", "</think>", tokens=1, inside=True), [7, 8])
    limit.push(0, b"a")
    assert limit.forced() == 7
    limit.push(7, b"</")
    assert limit.forced() == 8
    limit.push(8, b"think>")
    assert limit.forced() is None and not limit.thinking


# DeepSeek-R1's first templates: </think> only (earlier turns' thinking stripped), the block opened by no prompt.
EARLY_R1 = (Path(__file__).parents[1] / "seed_templates" / "deepseek-r1-distill-qwen-early.jinja").read_text("utf-8")
PUBLISHED_R1 = (Path(__file__).parents[1] / "seed_templates" / "deepseek-r1-distill-qwen.jinja").read_text("utf-8")


def test_a_template_with_only_the_end_marker_opens_the_block_implicitly():
    assert reasoning_format(None, EARLY_R1) == ReasoningFormat("<think>", "</think>", 2048, None, implicit_start=True)
    assert not reasoning_format(None, PUBLISHED_R1).implicit_start  # its prompt writes <think>
    assert not reasoning_format(None, R1_LIKE).implicit_start
    assert reasoning_format(ReasoningSpec(budget_tokens=8), EARLY_R1).implicit_start  # "auto"
    assert not reasoning_format(ReasoningSpec(implicit_start=False), EARLY_R1).implicit_start
    assert reasoning_format(ReasoningSpec(implicit_start=True), PLAIN).implicit_start
    assert not reasoning_format(ReasoningSpec(), PLAIN).implicit_start  # "auto": the template mentions neither
    assert reasoning_format(False, EARLY_R1) is None


@pytest.mark.parametrize("wrong", ['"sometimes"', "3", "[true]", "{a: 1}"])
def test_implicit_start_of_a_wrong_type_names_the_field(tmp_path, wrong):
    models = tmp_path / "models.yaml"
    models.write_text(f"models:\n- name: m\n  source: {{path: m.gguf}}\n  reasoning: {{implicit_start: {wrong}}}\n")
    with pytest.raises(ConfigError) as info:
        load_models_file(models)
    assert "implicit_start" in str(info.value)


def implicit(tokens: int) -> ThinkingLimit:
    return ThinkingLimit(ThinkingBudget("<think>", "</think>", tokens, inside=True, implicit_start=True), [END])


def test_an_implicit_block_counts_from_the_first_token():
    limit = implicit(3)
    assert limit.thinking
    assert run(limit, ["I", " think", "...", "x", "y"]) == ["I", " think", "...", "</think>", "x", "y"]
    assert not limit.thinking


def test_a_start_marker_written_anyway_neither_ends_an_implicit_block_nor_escapes_its_count():
    limit = implicit(4)
    assert run(limit, ["\n", "<th", "ink>", "a", "b", "c"]) == ["\n", "<th", "ink>", "a", "</think>", "b", "c"]
    limit = implicit(2)
    assert run(limit, ["<think>", "</think>", "a", "b", "c"]) == ["<think>", "</think>", "a", "b", "c"]  # closed
    limit = implicit(9)
    assert run(limit, ["<", "/think>", "a"]) == ["<", "/think>", "a"] and not limit.thinking  # the end, not <think>
    limit = implicit(1)
    assert run(limit, ["<thi", "a", "b"]) == ["<thi", "</think>", "a", "b"]  # forced while it may still be <think>


def test_an_implicit_block_written_through_is_thinking_to_the_end():
    limit = implicit(100)
    run(limit, ["I think", " <think> more", " and more"])
    assert limit.thinking and limit.forced() is None
