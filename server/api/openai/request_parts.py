"""The typed nested objects of chat request bodies (messages, tool calls, tools, tool choice, response format),
their bounds, and `tagged_union`, which tells the members of a union apart by their `type` (or `role`) field.

Every object is strict: a wrong type anywhere is a 400 whose `param` is the path to it (server/errors.py).
Unknown fields of an object are allowed, as OpenAI adds fields; they are ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, create_model
from pydantic.json_schema import SkipJsonSchema

# Bounds. OpenAI documents the first three; the others are far above any real request.
MAX_TOOLS = 128
MAX_LOGIT_BIAS = 300
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # function and response-format names
MAX_DESCRIPTION_CHARS = 32_768  # a tool's or a response format's description
MAX_CONTENT_PARTS = 256  # parts of one message's content
MAX_TOOL_CALLS = 128  # calls in one assistant message of the history
MAX_ID_CHARS = 256  # ids and names a client chooses: tool call ids, message names
# An image's URL: OpenAI's bound (its Responses `image_url`). A data URL counts against max_body_bytes too, and its
# image against the operator's image limits (server/generation/images.py).
MAX_IMAGE_URL_CHARS = 20 * 1024 * 1024

FunctionName = Annotated[str, Field(pattern=NAME_PATTERN)]
Description = Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS)]
ShortText = Annotated[str, Field(max_length=MAX_ID_CHARS)]
ImageURLText = Annotated[str, Field(min_length=1, max_length=MAX_IMAGE_URL_CHARS)]


class StrictObject(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


def tagged_union(*members: type[BaseModel], key: str = "type", default: str | None = None, other: Any = None) -> Any:
    """A union of objects chosen by the value of their `key` field (`default` when it is absent).

    An unknown value goes to `other` when given (a kind the consumer refuses by name), else to a hidden member
    whose only check is that value, so the error names `<path>.<key>` and lists the valid values. The tag of
    each member in pydantic's error locations is its class name, which server/errors.py leaves out of `param`."""
    tags = {value: member.__name__ for member in members for value in get_args(member.model_fields[key].annotation)}
    if other is None:
        field: Any = (Literal[tuple(tags)], ...)
        other = create_model(f"Unknown{members[0].__name__}", __base__=StrictObject, **{key: field})
    other_tag = other.__name__

    def discriminate(value: Any) -> str:
        kind = value.get(key, default) if isinstance(value, dict) else getattr(value, key, default)
        return tags.get(kind, other_tag) if isinstance(kind, str) else other_tag

    options = tuple(Annotated[member, Tag(member.__name__)] for member in members)
    return Annotated[
        Union[(*options, Annotated[SkipJsonSchema[other], Tag(other_tag)])],
        Discriminator(discriminate),
    ]


class TextPart(StrictObject):
    type: Literal["text"]
    text: str


class RefusalPart(StrictObject):
    type: Literal["refusal"]
    refusal: str


class ImageURL(StrictObject):
    url: ImageURLText  # a base64 data URL, or an http(s) URL (fetched only from hosts an operator allows)
    detail: Literal["auto", "low", "high"] | None = None  # accepted; the model's projector decides the resolution


class ImagePart(StrictObject):
    """An image in a user message (as OpenAI, only user messages take images)."""

    type: Literal["image_url"]
    image_url: ImageURL


def _parts(part: Any) -> Any:
    return Annotated[list[part], Field(max_length=MAX_CONTENT_PARTS)]


TextContent = str | _parts(TextPart)
UserContent = str | _parts(tagged_union(TextPart, ImagePart))
AssistantContent = str | _parts(tagged_union(TextPart, RefusalPart))


class FunctionCallParam(StrictObject):
    name: ShortText
    arguments: str  # JSON text, as OpenAI sends it


class ToolCallParam(StrictObject):
    id: ShortText
    type: Literal["function"]
    function: FunctionCallParam


class MessageParam(StrictObject):
    """What every message has: a role and a content, read as plain text."""

    role: str
    content: Any = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(
                part.text if isinstance(part, TextPart) else part.refusal
                for part in self.content
                if not isinstance(part, ImagePart)
            )
        return self.content or ""


class SystemMessageParam(MessageParam):
    role: Literal["system", "developer"]
    content: TextContent
    name: ShortText | None = None


class UserMessageParam(MessageParam):
    role: Literal["user"]
    content: UserContent
    name: ShortText | None = None


class AssistantMessageParam(MessageParam):
    role: Literal["assistant"]
    content: AssistantContent | None = None  # null when it has tool_calls
    refusal: str | None = None
    name: ShortText | None = None
    tool_calls: Annotated[list[ToolCallParam], Field(max_length=MAX_TOOL_CALLS)] | None = None
    # An earlier reply's thinking, sent back as DeepSeek's, vLLM's and llama.cpp's clients do (not OpenAI's field).
    reasoning_content: str | None = None


class ToolMessageParam(MessageParam):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: ShortText


ChatMessage = tagged_union(SystemMessageParam, UserMessageParam, AssistantMessageParam, ToolMessageParam, key="role")


class FunctionDefinition(StrictObject):
    name: FunctionName
    description: Description | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema, checked by what enforces it
    strict: bool | None = None

    def described(self) -> dict[str, Any]:
        """The function as a prompt or a chat template lists it."""
        fields = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {key: value for key, value in fields.items() if value is not None}


class FunctionToolParam(StrictObject):
    type: Literal["function"]
    function: FunctionDefinition


class OtherToolParam(StrictObject):
    """A tool of a kind this server does not run (`custom`, hosted tools): refused by name."""

    type: str


class FunctionChoice(StrictObject):
    name: ShortText


class NamedToolChoiceParam(StrictObject):
    type: Literal["function"]
    function: FunctionChoice


ChatTool = tagged_union(FunctionToolParam, other=OtherToolParam)
ChatTools = Annotated[list[ChatTool], Field(max_length=MAX_TOOLS)]
ToolChoiceMode = Literal["none", "auto", "required"]
ChatToolChoice = ToolChoiceMode | NamedToolChoiceParam


class JSONSchemaSpec(StrictObject):
    name: FunctionName
    description: Description | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatText(StrictObject):
    type: Literal["text"]


class ResponseFormatJSONObject(StrictObject):
    type: Literal["json_object"]


class ResponseFormatJSONSchema(StrictObject):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = tagged_union(ResponseFormatText, ResponseFormatJSONObject, ResponseFormatJSONSchema)


class StructuredOutputsParam(StrictObject):
    """vLLM's `structured_outputs`: one output constraint (server/api/openai/constraints.py). vLLM's options for
    its own backends (`disable_fallback`, `whitespace_pattern` ...) are accepted and ignored."""

    json_: dict[str, Any] | str | None = Field(default=None, alias="json")  # a JSON Schema, or its JSON text
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None  # GBNF
    json_object: bool | None = None
    structural_tag: Any = None  # refused by name


TokenIdKey = Annotated[str, Field(pattern=r"^[0-9]{1,10}$")]
LogitBias = Annotated[dict[TokenIdKey, Annotated[float, Field(ge=-100, le=100)]], Field(max_length=MAX_LOGIT_BIAS)]
