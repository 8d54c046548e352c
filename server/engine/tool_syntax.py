"""Which tool-call syntax a chat template teaches, read from its text; and earlier calls' arguments in a form
every template can print.

The syntaxes themselves (how calls are prompted, parsed and forced) live in server/generation/tool_dialects/;
the engine only names the one a model's template uses, when it loads the model.
"""

from __future__ import annotations

import json
from typing import Any

HERMES, LLAMA3, MISTRAL, DEEPSEEK, PHI4_MINI = "hermes", "llama3", "mistral", "deepseek", "phi4mini"
DEEPSEEK_V31 = "deepseek_v31"


def tool_dialect(source: str) -> str | None:
    """The tool-call syntax the template teaches or prints, by the markers only that syntax uses; None for a
    template without one we read (tools are then described in the system message, in a generic syntax)."""
    if "[TOOL_CALLS]" in source and "tools" in source and "[ARGS]" not in source:
        return MISTRAL  # Mistral Nemo / 7B v0.3: `[TOOL_CALLS][{...}]` (not the later `[TOOL_CALLS]name[ARGS]{...}`)
    if "tool▁calls▁begin" in source and "```json" in source:
        return DEEPSEEK  # DeepSeek V2.5/V3 and R1: `function`, a separator, the name, then the arguments in a fence
    if "tool▁calls▁begin" in source and "tool▁sep" in source:
        return DEEPSEEK_V31  # DeepSeek V3.1: the name, the separator, then the arguments as they are
    if "<|tool|>" in source and "<|/tool|>" in source:
        return PHI4_MINI
    if "<|start_header_id|>" in source and '"parameters": ' in source and "tools" in source:
        return LLAMA3  # Llama 3.1, 3.2, 3.3: `{"name": ..., "parameters": ...}`, `<|python_tag|>` on 3.1 and 3.3
    if "tools" in source and "<tool_call>" in source and '{"name": ' in source.replace('\\"', '"'):
        return HERMES  # Hermes 2 Pro / 3, Qwen 2.5, Qwen 3, SmolLM3: JSON in <tool_call> blocks
    return None


class JSONArguments(dict[str, Any]):
    """An earlier call's arguments (a JSON object) for a chat template. Templates differ on what they expect:
    most print `arguments | tojson` (an object), some concatenate `'...' + arguments` (JSON text, as OpenAI sends
    it: DeepSeek V3's, Mistral's older ones). This is both: a dict that, added to a string or printed, is its
    JSON text."""

    def __str__(self) -> str:
        return json.dumps(self, ensure_ascii=False)

    def __add__(self, other: object) -> str:
        if isinstance(other, str):
            return str(self) + other
        return NotImplemented

    def __radd__(self, other: object) -> str:
        if isinstance(other, str):
            return other + str(self)
        return NotImplemented
