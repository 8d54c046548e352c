"""An Anthropic Messages request as a GenerationPlan: the system prompt and messages as turns, tools and tool
choice, stop sequences, sampling. Checks of the plan against the model (context, tool schemas) are the
pipeline's; this module only maps, and refuses what has no mapping (documents, images in tool results, server
tools)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from server.api.anthropic.schemas import (
    AssistantMessageParam,
    Base64ImageSource,
    ImageBlockParam,
    MediaBlockParam,
    MessageFields,
    MessagesRequest,
    ServerToolParam,
    TextBlockParam,
    ThinkingBlockParam,
    ThinkingDisabled,
    ThinkingEnabled,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlockParam,
    ToolUseBlockParam,
    UserMessageParam,
)
from server.errors import InvalidRequestError, UnsupportedParameterError
from server.generation.plan import (
    FunctionSpec,
    GenerationPlan,
    ImageInput,
    ParamNames,
    ReasoningRequest,
    Sampling,
    ToolCallRecord,
    ToolRequest,
    Turn,
)

# The request fields each kind of 400 names. A schema for the output only ever comes from a tool's input_schema.
PARAMS = ParamNames(
    prompt="messages",
    max_tokens="max_tokens",
    output_schema="tools",
    tools="tools",
    tool_choice="tool_choice",
    reasoning="thinking",
)
# Text blocks of one turn are read as paragraphs: joined without a separator, two blocks' words would run together.
BLOCK_SEPARATOR = "\n"


def to_plan(body: MessageFields) -> GenerationPlan:
    """The plan for a Messages request, or for a count_tokens request (no `max_tokens`: none is generated)."""
    defaults = Sampling()
    return GenerationPlan(
        model=body.model,
        turns=(*_system_turns(body), *_message_turns(body)),
        sampling=Sampling(
            # Anthropic's temperature runs 0..1 where OpenAI's runs 0..2; both mean the same softmax temperature.
            temperature=defaults.temperature if body.temperature is None else body.temperature,
            top_p=defaults.top_p if body.top_p is None else body.top_p,
            top_k=body.top_k or 0,
        ),
        max_tokens=body.max_tokens if isinstance(body, MessagesRequest) else None,
        stop=tuple(body.stop_sequences or ()),
        tools=_tools(body),
        reasoning=_reasoning(body),
        params=PARAMS,
    )


def _reasoning(body: MessageFields) -> ReasoningRequest | None:
    """`thinking` for a reasoning model: disabled turns it off, enabled sets its budget, adaptive leaves the model's
    own; absent, the model does what it does by default."""
    thinking = body.thinking
    if thinking is None:
        return None
    if isinstance(thinking, ThinkingDisabled):
        return ReasoningRequest(enabled=False)
    if not isinstance(thinking, ThinkingEnabled):
        return ReasoningRequest(enabled=True)
    if isinstance(body, MessagesRequest) and thinking.budget_tokens >= body.max_tokens:
        raise InvalidRequestError(
            "'thinking.budget_tokens' must be less than 'max_tokens' (the thinking is part of the reply).",
            param="thinking.budget_tokens",
        )
    return ReasoningRequest(enabled=True, budget_tokens=thinking.budget_tokens)


def _system_turns(body: MessageFields) -> Iterator[Turn]:
    if isinstance(body.system, list):
        text = BLOCK_SEPARATOR.join(block.text for block in body.system)
    else:
        text = body.system or ""
    if text:
        yield Turn(role="system", content=text)


def _message_turns(body: MessageFields) -> Iterator[Turn]:
    for i, message in enumerate(body.messages):
        if isinstance(message, AssistantMessageParam):
            yield _assistant_turn(message)
        else:
            yield from _user_turns(message, f"messages[{i}].content")


def _assistant_turn(message: AssistantMessageParam) -> Turn:
    if isinstance(message.content, str):
        return Turn(role="assistant", content=message.content)
    texts = [block.text for block in message.content if isinstance(block, TextBlockParam)]
    calls = tuple(
        ToolCallRecord(id=block.id, name=block.name, arguments=json.dumps(block.input, ensure_ascii=False))
        for block in message.content
        if isinstance(block, ToolUseBlockParam)
    )
    thinking = "".join(block.thinking for block in message.content if isinstance(block, ThinkingBlockParam))
    return Turn(role="assistant", content=BLOCK_SEPARATOR.join(texts), tool_calls=calls, reasoning=thinking)


def _user_turns(message: UserMessageParam, path: str) -> Iterator[Turn]:
    """A user message's text and images as a user turn (each image at the offset where the text before it ends);
    each tool result as a tool turn, in the order the blocks come."""
    if isinstance(message.content, str):
        yield Turn(role="user", content=message.content)
        return
    texts: list[str] = []
    images: list[tuple[int, ImageInput]] = []
    for j, block in enumerate(message.content):
        if isinstance(block, TextBlockParam):
            texts.append(block.text)
        elif isinstance(block, ImageBlockParam):
            offset = sum(map(len, texts)) + len(BLOCK_SEPARATOR) * max(len(texts) - 1, 0)
            images.append((offset, _image(block, f"{path}[{j}]")))
        elif isinstance(block, ToolResultBlockParam):
            if texts or images:
                yield Turn(role="user", content=BLOCK_SEPARATOR.join(texts), images=tuple(images))
                texts, images = [], []
            yield Turn(role="tool", content=_result_text(block, f"{path}[{j}]"), tool_call_id=block.tool_use_id)
        else:
            _refuse_media(block, f"{path}[{j}]", "document blocks are not supported by this server")
    if texts or images:
        yield Turn(role="user", content=BLOCK_SEPARATOR.join(texts), images=tuple(images))


def _image(block: ImageBlockParam, path: str) -> ImageInput:
    source = block.source
    if isinstance(source, Base64ImageSource):
        return ImageInput(f"data:{source.media_type};base64,{source.data}", f"{path}.source.data")
    return ImageInput(source.url, f"{path}.source.url")


def _result_text(block: ToolResultBlockParam, path: str) -> str:
    if isinstance(block.content, str):
        return block.content
    texts = []
    for k, part in enumerate(block.content):
        if isinstance(part, MediaBlockParam):
            why = f"{part.type} blocks in a tool result are not supported by this server"
            if part.type == "image":
                why += "; send the image as an image block of the user message"
            _refuse_media(part, f"{path}.content[{k}]", why)
        texts.append(part.text)
    return BLOCK_SEPARATOR.join(texts)


def _refuse_media(block: MediaBlockParam, path: str, why: str) -> None:
    raise UnsupportedParameterError(f"Invalid value for '{path}.type': {why}.", param=f"{path}.type")


def _tools(body: MessageFields) -> ToolRequest | None:
    if body.tools is None and body.tool_choice is None:
        return None
    functions = []
    for i, tool in enumerate(body.tools or ()):
        if isinstance(tool, ServerToolParam):
            raise UnsupportedParameterError(
                f"Invalid value for 'tools[{i}].type': {tool.type[:64]!r} is a tool that Anthropic runs; this server "
                "only offers client tools (no `type`, or `type` 'custom').",
                param=f"tools[{i}].type",
            )
        functions.append(FunctionSpec(tool.name, tool.description, tool.input_schema, f"tools[{i}].input_schema"))
    choice = body.tool_choice
    if choice is None or isinstance(choice, ToolChoiceNone):
        return ToolRequest(tuple(functions), "none" if choice else "auto")
    parallel = not choice.disable_parallel_tool_use
    if isinstance(choice, ToolChoiceTool):
        return ToolRequest(tuple(functions), _named_choice(choice.name, functions), parallel)
    # "required" with no tools at all is refused by the pipeline, naming tool_choice.
    return ToolRequest(tuple(functions), "required" if isinstance(choice, ToolChoiceAny) else "auto", parallel)


def _named_choice(name: str, functions: list[FunctionSpec]) -> str:
    """The plan's choice for `{"type": "tool", "name": name}`. The plan spells its modes as strings too, so a tool
    named like one of them can only be forced when it is the only tool ("required" then means it)."""
    names = [function.name for function in functions]
    if not names:
        raise InvalidRequestError("'tool_choice' needs 'tools'.", param="tool_choice")
    if name not in names:
        where = "tool_choice.name"
        raise InvalidRequestError(f"Invalid value for '{where}': no tool is named {name[:64]!r}.", param=where)
    if name in _PLAN_MODES:
        if names != [name]:
            raise UnsupportedParameterError(
                f"Invalid value for 'tool_choice.name': this server cannot force a tool named {name!r} while other "
                "tools are offered; use tool_choice 'any' with that tool alone.",
                param="tool_choice.name",
            )
        return "required"
    return name


_PLAN_MODES = frozenset({"auto", "required", "none"})
