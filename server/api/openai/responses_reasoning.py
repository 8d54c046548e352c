"""A reasoning model's thinking in the Responses API: a `reasoning` output item, before the message or the calls,
holding one `reasoning_text` part (the models served here write no summaries), and its stream events
(`response.reasoning_text.delta` and the rest, in the order OpenAI sends them)."""

from __future__ import annotations

import uuid
from typing import Any


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [_reasoning_part(text)]
    return {"type": "reasoning", "id": item_id, "summary": [], "content": content, "status": status}


def new_reasoning_id() -> str:
    return f"rs_{uuid.uuid4().hex[:24]}"


class ReasoningOutput:
    """The events of one streamed reasoning item: `piece` for each piece of thinking (the item opens with the
    first, at `index` in the output), then `close` once the thinking is over."""

    def __init__(self) -> None:
        self.id = new_reasoning_id()
        self.index: int | None = None
        self.text = ""
        self.open = False

    def piece(self, text: str, index: int) -> list[dict[str, Any]]:
        out = []
        if self.index is None:
            self.index, self.open = index, True
            item = reasoning_item(self.id, "", "in_progress") | {"content": []}
            out.append({"type": "response.output_item.added", "output_index": index, "item": item})
            out.append({**self._part(), "type": "response.content_part.added", "part": _reasoning_part("")})
        self.text += text
        out.append({**self._part(), "type": "response.reasoning_text.delta", "delta": text})
        return out

    def close(self) -> list[dict[str, Any]]:
        self.open = False
        return [
            {**self._part(), "type": "response.reasoning_text.done", "text": self.text},
            {**self._part(), "type": "response.content_part.done", "part": _reasoning_part(self.text)},
            {"type": "response.output_item.done", "output_index": self.index, "item": self.item()},
        ]

    def item(self) -> dict[str, Any]:
        return reasoning_item(self.id, self.text)

    def _part(self) -> dict[str, Any]:
        return {"item_id": self.id, "output_index": self.index, "content_index": 0}


def _reasoning_part(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}
