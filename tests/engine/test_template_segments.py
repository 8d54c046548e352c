"""A prompt's pieces as the engine tokenizes them: contents as text, the template's markup (and the markers a
MarkedContent carries) as markup; a content the template trims is cut consistently; a MarkedContent travels to the
model's worker whole."""

from __future__ import annotations

import pickle

import pytest

from server.engine.template import MARKER, TEXT, ChatTemplate, MarkedContent, join_contents

TRIMMING = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] | trim + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def marked(*pieces: tuple[str, bool]) -> MarkedContent:
    return MarkedContent(pieces)


def test_a_marked_content_is_its_whole_text_and_keeps_its_pieces():
    content = marked(("Hi ", TEXT), ("<m>", MARKER), ("", TEXT), ('{"a": 1}', TEXT), ("</m>", MARKER))
    assert content == 'Hi <m>{"a": 1}</m>' and isinstance(content, str)
    assert content.pieces == (("Hi ", TEXT), ("<m>", MARKER), ('{"a": 1}', TEXT), ("</m>", MARKER))  # no empties
    # As the engine's worker process receives it (multiprocessing pickles what it sends).
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps({"content": content}, protocol=protocol))["content"]
        assert isinstance(copy, MarkedContent) and copy == content and copy.pieces == content.pieces


def test_joined_contents_keep_their_markers_and_plain_ones_stay_plain():
    assert type(join_contents("a", "\n\n", "b")) is str
    joined = join_contents("Be brief.", "\n\n", marked(("x", TEXT), ("<m>", MARKER)))
    assert isinstance(joined, MarkedContent) and joined == "Be brief.\n\nx<m>"
    assert joined.pieces == (("Be brief.", TEXT), ("\n\n", TEXT), ("x", TEXT), ("<m>", MARKER))


def test_the_markers_are_markup_and_the_rest_is_content():
    content = marked(("Calling <m> now", TEXT), ("<m>", MARKER), ('{"q": "<m>"}', TEXT), ("</m>", MARKER))
    messages = [{"role": "user", "content": "Hi <m>"}, {"role": "assistant", "content": content}]
    text, segments = ChatTemplate(None).render_segments(messages)  # ChatML
    assert "".join(piece for piece, _ in segments) == text
    assert segments == [
        ("<|im_start|>user\n", False),
        ("Hi <m>", True),
        ("<|im_end|>\n<|im_start|>assistant\n", False),
        ("Calling <m> now", True),
        ("<m>", False),  # only the marker the content carries is markup: the client's spellings of it are text
        ('{"q": "<m>"}', True),
        ("</m><|im_end|>\n<|im_start|>assistant\n", False),  # neighbours of a kind are one piece
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (marked(("  <m>", MARKER), ("x", TEXT), ("</m>\n", MARKER)), ["<|user|><m>", "x", "</m><|end|><|assistant|>"]),
        (marked(("  ", TEXT), (" x ", TEXT), ("<m>", MARKER), (" \n", TEXT)),
         ["<|user|>", "x ", "<m><|end|><|assistant|>"]),
        (marked((" \n ", TEXT), ("<m>", MARKER)), ["<|user|><m><|end|><|assistant|>"]),
        ("  plain  ", ["<|user|>", "plain", "<|end|><|assistant|>"]),
    ],
)  # fmt: skip
def test_a_content_the_template_trims_is_cut_across_its_pieces(content, expected):
    text, segments = ChatTemplate(TRIMMING).render_segments([{"role": "user", "content": content}])
    assert segments == [(piece, i % 2 == 1) for i, piece in enumerate(expected)]  # markup, text, markup...
    assert "".join(piece for piece, _ in segments) == text


def test_a_template_that_rewrites_a_marked_content_leaves_no_pieces():
    rewriting = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
    content = marked(("x", TEXT), ("<m>", MARKER))
    assert ChatTemplate(rewriting).render_segments([{"role": "user", "content": content}]) == ("X<M>", None)
