"""Chat prompts rendered with the Jinja chat template a GGUF file ships (`tokenizer.chat_template`)."""

from __future__ import annotations

import datetime
import json
import logging
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from server.engine import tool_syntax
from server.errors import InvalidRequestError

logger = logging.getLogger(__name__)

# llama.cpp's own fallback for models that ship no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


_OWN_VARIABLES = frozenset({"messages", "add_generation_prompt", "bos_token", "eos_token", "tools"})


TEXT, MARKER = True, False  # a piece of a MarkedContent: text (tokenized as text) or one of the syntax's markers


class MarkedContent(str):
    """A message content a tool dialect writes with its own syntax in it (Phi-4-mini's template prints earlier
    calls only inside the content): pieces of text (the turn's own content, the calls' JSON: the client's) between
    markers the dialect inserted itself (its control tokens' text). It renders as its whole text; `render_segments`
    keeps the markers out of the content segments, so they become the control tokens the model was trained on,
    while control-token text inside the client's pieces stays text."""

    pieces: tuple[tuple[str, bool], ...]  # (text, TEXT or MARKER), empty pieces left out

    def __new__(cls, pieces: Iterable[tuple[str, bool]]) -> MarkedContent:
        kept = tuple((piece, bool(is_text)) for piece, is_text in pieces if piece)
        content = super().__new__(cls, "".join(piece for piece, _ in kept))
        content.pieces = kept
        return content

    def __reduce__(self) -> tuple[type[MarkedContent], tuple[tuple[tuple[str, bool], ...]]]:
        return MarkedContent, (self.pieces,)  # to the model's worker process, pieces and all


def join_contents(*parts: str) -> str:
    """Contents one after the other, a MarkedContent's markers kept as markers (any other string is text)."""
    if not any(isinstance(part, MarkedContent) for part in parts):
        return "".join(parts)
    return MarkedContent(
        piece for part in parts for piece in (part.pieces if isinstance(part, MarkedContent) else ((part, TEXT),))
    )


class ChatTemplateError(InvalidRequestError):
    """The template refused the conversation (for example roles that do not alternate)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="messages")


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value: Any, indent: int | None = None, **_ignored: Any) -> str:
    # Chat templates are written for Hugging Face's renderer, whose tojson is plain JSON (jinja2's own escapes
    # <, > and & for HTML, which would show the model "\u003c" where it was trained on "<").
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        if not source:
            logger.warning("model ships no chat template; using ChatML")
        self.source = source or CHATML_TEMPLATE
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        env.filters["tojson"] = _tojson
        self._template = env.from_string(self.source)
        self._bos_token = bos_token
        self._eos_token = eos_token

    @property
    def tool_dialect(self) -> str | None:
        """The tool-call syntax the template teaches (server/engine/tool_syntax.py: Hermes/Qwen, Llama 3.x,
        Mistral, DeepSeek, Phi-4-mini); None for any other (tools are then described in the system message)."""
        return tool_syntax.tool_dialect(self.source)

    def render_segments(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[dict[str, Any]] | None = None,
        variables: Mapping[str, Any] | None = None,
    ) -> tuple[str, list[tuple[str, bool]] | None]:
        """The prompt, and its pieces marked True where they are a message's content (to be tokenized as plain
        text: a user who writes a control token's text must not get the control token). The pieces are found by
        rendering the conversation again with a unique mark in place of each content; None when the template
        changes contents in a way other than trimming them (their place cannot then be known). A MarkedContent's
        markers are pieces of their own, marked False (they are the template's syntax, not the client's text)."""
        text = self.render(messages, add_generation_prompt=add_generation_prompt, tools=tools, variables=variables)
        nonce = secrets.token_hex(8)
        contents: dict[str, str] = {}
        marked = []
        for i, message in enumerate(messages):
            content = message.get("content")
            if isinstance(content, str) and content:
                mark = f"\ue000{nonce}.{i}\ue001"
                contents[mark] = content
                message = {**message, "content": mark}
            marked.append(message)
        if not contents:
            return text, [(text, False)]
        try:
            skeleton = self.render(
                marked, add_generation_prompt=add_generation_prompt, tools=tools, variables=variables
            )
        except ChatTemplateError:
            return text, None
        pieces = re.split(f"(\ue000{nonce}\\.\\d+\ue001)", skeleton)
        for trimmed in (False, True):
            segments = [
                segment
                for p in pieces
                for segment in (_content_segments(contents[p], trimmed) if p in contents else [(p, False)])
            ]
            if "".join(piece for piece, _ in segments) == text:
                return text, _merged(segments)
        return text, None

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[dict[str, Any]] | None = None,
        variables: Mapping[str, Any] | None = None,
    ) -> str:
        """`variables`: more for the template (a reasoning model's `enable_thinking`), never one of its own."""
        extra = {k: v for k, v in (variables or {}).items() if k not in _OWN_VARIABLES}
        if tools is not None:
            extra["tools"] = list(tools)
        try:
            return self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
                **extra,
            )
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template failed: {exc}") from exc


def _content_segments(content: str, trimmed: bool) -> list[tuple[str, bool]]:
    """A content's segments (True: text; a MarkedContent's markers False), whole or as the template's `trim`
    leaves it: blanks cut from its two ends, across its pieces."""
    pieces = content.pieces if isinstance(content, MarkedContent) else ((content, TEXT),)
    start, end = (len(content) - len(content.lstrip()), len(content.rstrip())) if trimmed else (0, len(content))
    segments, at = [], 0
    for piece, is_text in pieces:
        kept = piece[max(start - at, 0) : max(end - at, 0)]
        if kept:
            segments.append((kept, is_text))
        at += len(piece)
    return segments


def _merged(segments: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """The segments, empty ones left out and neighbours of a kind joined (tokenized as the one text they are)."""
    merged: list[tuple[str, bool]] = []
    for piece, is_content in segments:
        if not piece:
            continue
        if merged and merged[-1][1] == is_content:
            merged[-1] = (merged[-1][0] + piece, is_content)
        else:
            merged.append((piece, is_content))
    return merged
