"""The request body of the Responses API (`POST /v1/responses`): input items, function tools, text format."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from server.api.openai.request_parts import (
    MAX_CONTENT_PARTS,
    MAX_TOOLS,
    Description,
    FunctionName,
    ImageURLText,
    OtherToolParam,
    ResponseFormatJSONObject,
    ResponseFormatText,
    ShortText,
    StrictObject,
    ToolChoiceMode,
    tagged_union,
)
from server.api.openai.schemas import OpenAIRequest, ReasoningEffort


class InputText(StrictObject):
    type: Literal["input_text", "output_text"]
    text: str


class InputRefusal(StrictObject):
    type: Literal["refusal"]
    refusal: str


class InputImage(StrictObject):
    """An image in a user message: by `image_url` (a base64 data URL, or an http(s) URL fetched only from hosts an
    operator allows). A `file_id` is refused: this server's files are not images a model reads."""

    type: Literal["input_image"]
    image_url: ImageURLText | None = None
    file_id: ShortText | None = None
    detail: Literal["auto", "low", "high", "original"] | None = None  # accepted; the projector decides


InputPart = tagged_union(InputText, InputRefusal, InputImage)


class InputMessage(StrictObject):
    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[InputPart], Field(max_length=MAX_CONTENT_PARTS)]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(
            part.text if isinstance(part, InputText) else part.refusal
            for part in self.content
            if not isinstance(part, InputImage)
        )


class FunctionCallOutput(StrictObject):
    type: Literal["function_call_output"]
    call_id: ShortText
    output: str | Annotated[list[InputText], Field(max_length=MAX_CONTENT_PARTS)]


class FunctionCallItem(StrictObject):
    type: Literal["function_call"]
    call_id: ShortText
    name: ShortText
    arguments: str


class ReasoningTextPart(StrictObject):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningInputItem(StrictObject):
    """An earlier reply's `reasoning` item, sent back as clients that keep the conversation themselves do: its text
    goes with the assistant item after it as that turn's thinking (templates that show earlier thinking read it)."""

    type: Literal["reasoning"]
    id: ShortText | None = None
    summary: Annotated[list[ReasoningTextPart], Field(max_length=MAX_CONTENT_PARTS)] = []
    content: Annotated[list[ReasoningTextPart], Field(max_length=MAX_CONTENT_PARTS)] | None = None
    encrypted_content: str | None = None


InputItem = tagged_union(InputMessage, FunctionCallOutput, FunctionCallItem, ReasoningInputItem, default="message")


class FunctionTool(StrictObject):
    type: Literal["function"]
    name: FunctionName
    description: Description | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema, checked by what enforces it
    strict: bool | None = None


class NamedFunctionChoice(StrictObject):
    type: Literal["function"]
    name: ShortText


class TextFormatJSONSchema(StrictObject):
    type: Literal["json_schema"]
    name: FunctionName
    schema_: dict[str, Any] = Field(alias="schema")
    description: Description | None = None
    strict: bool | None = None


TextFormat = tagged_union(ResponseFormatText, ResponseFormatJSONObject, TextFormatJSONSchema)
ResponsesTool = tagged_union(FunctionTool, other=OtherToolParam)


class TextConfig(StrictObject):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None  # a hint the models served here cannot follow


class ReasoningConfig(StrictObject):
    effort: ReasoningEffort | None = None  # as chat's `reasoning_effort`
    summary: Literal["auto", "concise", "detailed"] | None = None  # accepted; the models served here write none
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


Metadata = Annotated[  # OpenAI's bounds
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=16)
]


class ResponsesRequest(OpenAIRequest):
    model: str = Field(min_length=1)
    input: str | Annotated[list[InputItem], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    stream: bool = False
    text: TextConfig | None = None
    tools: Annotated[list[ResponsesTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoiceMode | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    metadata: Metadata | None = None
    reasoning: ReasoningConfig | None = None
