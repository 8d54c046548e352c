"""Tool-call dialects: each model family's own syntax for tools (server/engine/tool_syntax.py names the one a
model's chat template uses), and the generic one for every other model."""

from __future__ import annotations

from server.generation.tool_dialects.base import MAX_CALLS, CallFormat, Dialect
from server.generation.tool_dialects.deepseek import DeepSeek, DeepSeekV31
from server.generation.tool_dialects.generic import Generic
from server.generation.tool_dialects.hermes import Hermes
from server.generation.tool_dialects.llama3 import Llama3
from server.generation.tool_dialects.mistral import Mistral
from server.generation.tool_dialects.phi4 import Phi4Mini
from server.generation.tool_dialects.preview import CallPreview
from server.generation.tool_dialects.spotter import CallSpotter

GENERIC = Generic.name
_ALL = (Generic, Hermes, Llama3, Mistral, DeepSeek, DeepSeekV31, Phi4Mini)


def dialect(name: str | None) -> Dialect:
    """The dialect of that name; the generic one for None (or a name this version does not know)."""
    return next((kind for kind in _ALL if kind.name == name), Generic)()


__all__ = ["GENERIC", "MAX_CALLS", "CallFormat", "CallPreview", "CallSpotter", "Dialect", "dialect"]
