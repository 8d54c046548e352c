"""Chat prompts rendered with the Jinja chat template a GGUF file ships (`tokenizer.chat_template`)."""

from __future__ import annotations

import datetime
import json
import logging
import re
import secrets
from collections.abc import Mapping, Sequence
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
        changes contents in a way other than trimming them (their place cannot then be known)."""
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
        for fill in (lambda c: c, str.strip):
            segments = [(contents[p] and fill(contents[p]), True) if p in contents else (p, False) for p in pieces]
            if "".join(piece for piece, _ in segments) == text:
                return text, [(piece, is_content) for piece, is_content in segments if piece]
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
