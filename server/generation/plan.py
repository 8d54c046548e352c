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
class ImageInput:
    """An image as the client sent it: a `data:` URL, or an http(s) URL (fetched only from the hosts an operator
    allows: server/generation/images.py)."""

    url: str
    where: str  # the request path a 400 about this image names (`messages[0].content[1].image_url.url`)
    detail: str | None = None  # OpenAI's `detail`: accepted; the projector decides the resolution


@dataclass(frozen=True)
class Turn:
    """One message of a conversation. Roles: system, user, assistant, tool."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: tuple[ToolCallRecord, ...] = ()
    tool_call_id: str | None = None  # on a tool result: the call it answers
    reasoning: str = ""  # on an assistant turn: its thinking, sent back (templates that show it get it)
    images: tuple[tuple[int, ImageInput], ...] = ()  # on a user turn: images at these offsets of `content`


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
    output_grammar: str = "grammar"  # the field that asked for `GenerationPlan.grammar`
    tools: str = "tools"
    tool_choice: str = "tool_choice"
    logit_bias: str = "logit_bias"
    reasoning: str = "reasoning_effort"


@dataclass(frozen=True)
class ReasoningRequest:
    """What a request asks of a reasoning model's thinking (server/generation/thinking.py): on or off, and how
    long it may run: `budget_tokens` tokens, or the model's own budget times `budget_scale` (None: unbounded)."""

    enabled: bool
    budget_tokens: int | None = None
    budget_scale: float | None = 1.0


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
    # Or a GBNF grammar (root rule `root`) the output must follow: a client's own, or one an adapter built from a
    # regex or a list of choices; within server/generation/grammar_check.py's bounds (checked by the adapter).
    grammar: str | None = None
    tools: ToolRequest | None = None
    reasoning: ReasoningRequest | None = None  # None: the model's default (a reasoning model thinks)
    params: ParamNames = field(default_factory=ParamNames)
