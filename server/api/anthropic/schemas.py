"""Anthropic Messages API wire types: the request bodies of /v1/messages and /v1/messages/count_tokens, the
`Message` a request is answered with, and the token count. Pydantic only.

Requests are strict and bounded: a wrong type anywhere is a 400 whose param is the path to it (server/errors.py).
Unknown fields are accepted, as Anthropic adds fields (`cache_control`, `citations`), and ignored; those at the top
level are logged.
"""

from __future__ import annotations

import itertools
import logging
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, create_model, model_validator
from pydantic.json_schema import SkipJsonSchema

logger = logging.getLogger(__name__)

# Bounds. Tool count and name pattern as Anthropic documents them; stop sequences as our OpenAI `stop`; the others
# far above any real request.
MAX_TOOLS = 128
TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
MAX_STOP_SEQUENCES, MAX_STOP_SEQUENCE_CHARS = 4, 500
MAX_BLOCKS = 256  # content blocks of one message, or of the system prompt
MAX_DESCRIPTION_CHARS = 32_768
MAX_ID_CHARS = 256  # ids and names a client chooses: model, tool use ids, user id
MAX_IMAGE_CHARS = 20 * 1024 * 1024  # an image's base64 data or URL; its bytes also count against max_body_bytes
LOGGED_NAMES, LOGGED_NAME_CHARS = 10, 40  # a client can send 100k unknown fields: the log line stays short

ShortText = Annotated[str, Field(max_length=MAX_ID_CHARS)]


class StrictObject(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


def tagged(
    members: dict[str, type[BaseModel]], *, key: str = "type", absent: str | None = None, other: Any = None
) -> Any:
    """A union of objects chosen by the value of their `key` field (`absent` when it is missing or null).

    Any other value goes to `other` when given (a kind the adapter refuses by name), else to a hidden member whose
    only check is that value, so the error names `<path>.<key>` and lists the valid values. Members are tagged by
    class name, which server/errors.py leaves out of params."""
    unknown = other or create_model(
        f"Unknown{next(iter(members.values())).__name__}",
        __base__=StrictObject,
        **{key: (Literal[tuple(members)], ...)},
    )

    def discriminate(value: Any) -> str:
        kind = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        kind = absent if kind is None else kind
        member = members.get(kind) if isinstance(kind, str) else None
        return member.__name__ if member else unknown.__name__

    options = tuple(Annotated[member, Tag(member.__name__)] for member in dict.fromkeys(members.values()))
    return Annotated[
        Union[(*options, Annotated[SkipJsonSchema[unknown], Tag(unknown.__name__)])],
        Discriminator(discriminate),
    ]


def _blocks(block: Any) -> Any:
    return Annotated[list[block], Field(max_length=MAX_BLOCKS)]


class TextBlockParam(StrictObject):
    type: Literal["text"]
    text: str


class ToolUseBlockParam(StrictObject):
    type: Literal["tool_use"]
    id: ShortText
    name: ShortText
    input: dict[str, Any]


class MediaBlockParam(StrictObject):
    """A document, or an image in a tool result: the adapter refuses it by name."""

    type: Literal["image", "document"]


ImageText = Annotated[str, Field(min_length=1, max_length=MAX_IMAGE_CHARS)]


class Base64ImageSource(StrictObject):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]  # the format is read from the data
    data: ImageText


class URLImageSource(StrictObject):
    type: Literal["url"]
    url: ImageText  # http(s), fetched only from the hosts an operator allows (server/generation/images.py)


ImageSource = tagged({"base64": Base64ImageSource, "url": URLImageSource})


class ImageBlockParam(StrictObject):  # in a user message, for a vision model
    type: Literal["image"]
    source: ImageSource


ToolResultContentBlock = tagged({"text": TextBlockParam, "image": MediaBlockParam, "document": MediaBlockParam})


class ToolResultBlockParam(StrictObject):
    type: Literal["tool_result"]
    tool_use_id: ShortText
    content: str | _blocks(ToolResultContentBlock) = ""
    is_error: bool | None = None


class ThinkingBlockParam(StrictObject):
    """An earlier reply's thinking, sent back as Anthropic asks clients to: given to the template as the turn's
    `reasoning_content` (templates that show earlier thinking, such as Qwen3's, read it; others drop it)."""

    type: Literal["thinking"]
    thinking: str
    signature: str = ""


class RedactedThinkingBlockParam(StrictObject):
    type: Literal["redacted_thinking"]
    data: str


UserBlock = tagged(
    {"text": TextBlockParam, "tool_result": ToolResultBlockParam, "image": ImageBlockParam, "document": MediaBlockParam}
)
AssistantBlock = tagged(
    {
        "text": TextBlockParam,
        "tool_use": ToolUseBlockParam,
        "thinking": ThinkingBlockParam,
        "redacted_thinking": RedactedThinkingBlockParam,
    }
)


class UserMessageParam(StrictObject):
    role: Literal["user"]
    content: str | _blocks(UserBlock)


class AssistantMessageParam(StrictObject):
    role: Literal["assistant"]
    content: str | _blocks(AssistantBlock)


MessageParam = tagged({"user": UserMessageParam, "assistant": AssistantMessageParam}, key="role")


class ToolParam(StrictObject):
    """A client tool: the model may call it, the client runs it."""

    type: Literal["custom"] | None = None
    name: Annotated[str, Field(pattern=TOOL_NAME_PATTERN)]
    description: Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS)] | None = None
    input_schema: dict[str, Any]  # a JSON Schema, checked by the pipeline


class ServerToolParam(StrictObject):
    """A tool Anthropic runs itself (`web_search_20250305`, `bash_20250124`, ...): the adapter refuses it by name."""

    type: str


class _ParallelChoice(StrictObject):
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAuto(_ParallelChoice):
    type: Literal["auto"]


class ToolChoiceAny(_ParallelChoice):
    type: Literal["any"]


class ToolChoiceTool(_ParallelChoice):
    type: Literal["tool"]
    name: ShortText


class ToolChoiceNone(StrictObject):
    type: Literal["none"]


ToolChoiceParam = tagged({"auto": ToolChoiceAuto, "any": ToolChoiceAny, "tool": ToolChoiceTool, "none": ToolChoiceNone})
Tool = tagged({"custom": ToolParam}, absent="custom", other=ServerToolParam)


class MetadataParam(StrictObject):
    user_id: ShortText | None = None


ThinkingDisplay = Literal["summarized", "omitted"]


class ThinkingEnabled(StrictObject):
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1)  # Anthropic asks for at least 1024; small models think less
    display: ThinkingDisplay | None = None


class ThinkingDisabled(StrictObject):
    type: Literal["disabled"]


class ThinkingAdaptive(StrictObject):
    """The model decides how much to think: here, within its own thinking budget."""

    type: Literal["adaptive", "between_tools"]
    display: ThinkingDisplay | None = None


ThinkingConfig = tagged(
    {
        "enabled": ThinkingEnabled,
        "disabled": ThinkingDisabled,
        "adaptive": ThinkingAdaptive,
        "between_tools": ThinkingAdaptive,
    }
)
StopSequence = Annotated[str, Field(min_length=1, max_length=MAX_STOP_SEQUENCE_CHARS)]


class AnthropicRequest(StrictObject):
    """Base of request bodies: unknown top-level fields (newer Anthropic parameters) are accepted and logged."""

    @model_validator(mode="after")
    def _log_unknown_fields(self) -> AnthropicRequest:
        if self.model_extra:
            names = [name[:LOGGED_NAME_CHARS] for name in itertools.islice(self.model_extra, LOGGED_NAMES)]
            logger.info("ignoring %d unknown request fields: %s", len(self.model_extra), names)
        return self


class MessageFields(AnthropicRequest):
    """What a conversation to answer or count is made of: every field but `max_tokens` and `stream`."""

    model: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | _blocks(TextBlockParam) | None = None
    stop_sequences: Annotated[list[StopSequence], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoiceParam | None = None
    metadata: MetadataParam | None = None
    thinking: ThinkingConfig | None = None  # for a reasoning model: None is its own default (it thinks)


class MessagesRequest(MessageFields):
    max_tokens: int = Field(ge=1)
    stream: bool = False


class CountTokensRequest(MessageFields):
    pass


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class ThinkingBlock(BaseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = ""  # this server signs nothing, and checks no signature sent back


ContentBlock = Annotated[ThinkingBlock | TextBlock | ToolUseBlock, Field(discriminator="type")]
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int


class Message(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[ContentBlock]
    model: str
    stop_reason: StopReason | None  # null only in a stream's message_start
    stop_sequence: str | None = None
    usage: Usage


class TokenCount(BaseModel):
    input_tokens: int
