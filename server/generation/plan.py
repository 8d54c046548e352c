"""What every generating endpoint asks of the pipeline, in no protocol's terms: a `GenerationPlan`.

Adapters (server/api/openai, server/api/anthropic) turn their wire requests into a plan; the pipeline
(server/generation/pipeline.py) checks it against the model, renders and tokenizes the prompt, builds the output
grammar and starts one engine stream per choice. `params` name the request fields to blame in a 400, so each
protocol's errors speak its own field names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from server.engine.base import SamplingParams


@dataclass(frozen=True)
class ToolCallRecord:
    """A call the assistant made earlier in the conversation."""

    id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True)
class Turn:
    """One message of a conversation. Roles: system, user, assistant, tool."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: tuple[ToolCallRecord, ...] = ()
    tool_call_id: str | None = None  # on a tool result: the call it answers


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    description: str | None = None
    parameters: dict | None = None  # a JSON Schema; None: no parameters
    where: str = ""  # the request path of `parameters`, named by a 400 about the schema

    def described(self) -> dict:
        """The function as it is shown to the model."""
        out: dict = {"name": self.name}
        if self.description is not None:
            out["description"] = self.description
        if self.parameters is not None:
            out["parameters"] = self.parameters
        return out


@dataclass(frozen=True)
class ToolRequest:
    functions: tuple[FunctionSpec, ...]
    choice: Literal["auto", "required", "none"] | str = "auto"  # any other string: that function is required
    parallel: bool = True


# Sampling settings are the engine's own (its logit_bias token ids are checked against the model's vocabulary).
Sampling = SamplingParams


@dataclass(frozen=True)
class ParamNames:
    """The request fields each kind of 400 names, in the protocol's own terms."""

    prompt: str = "messages"
    max_tokens: str = "max_tokens"
    output_schema: str = "response_format"
    tools: str = "tools"
    tool_choice: str = "tool_choice"
    logit_bias: str = "logit_bias"


@dataclass(frozen=True)
class GenerationPlan:
    model: str
    turns: tuple[Turn, ...] = ()  # a conversation, rendered by the model's chat template ...
    prompt: str | None = None  # ... or a raw prompt (legacy completions), tokenized as it is
    sampling: Sampling = field(default_factory=Sampling)
    max_tokens: int | None = None  # None: the rest of the context window
    stop: tuple[str, ...] = ()
    n: int = 1
    logprobs: int | None = None  # None: none; k >= 0: each token's, with the k most likely others
    json_schema: str | None = None  # "{}": any JSON object; else a JSON Schema's text (checked by the adapter)
    tools: ToolRequest | None = None
    params: ParamNames = field(default_factory=ParamNames)
