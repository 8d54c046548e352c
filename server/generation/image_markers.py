"""Where a conversation's images go in its prompt: a marker in each image's place in its message's content, which
the model's worker cuts out again after the chat template has rendered the conversation (the image's own tokens
go there). The marker holds a nonce drawn per request, so no text a client sends can stand for an image."""

from __future__ import annotations

import dataclasses
import secrets

from server.generation.plan import GenerationPlan, ImageInput, Turn

SHOWN_IMAGE_MARKER = "<__media__>"
"""What a rendered prompt shows in an image's place (llama.cpp's own media marker)."""


def image_marker() -> str:
    return f"<\ue000image {secrets.token_hex(8)}\ue001>"


def images_of(plan: GenerationPlan) -> list[ImageInput]:
    """The plan's images in prompt order."""
    return [image for turn in plan.turns for _, image in sorted(turn.images, key=lambda placed: placed[0])]


def with_image_markers(turns: tuple[Turn, ...], marker: str) -> tuple[Turn, ...]:
    """The turns with `marker` at each image's offset of its content (images at one offset keep their order)."""
    out = []
    for turn in turns:
        if not turn.images:
            out.append(turn)
            continue
        content, at = [], 0
        for offset, _ in sorted(turn.images, key=lambda placed: placed[0]):
            offset = min(max(offset, at), len(turn.content))
            content += [turn.content[at:offset], marker]
            at = offset
        content.append(turn.content[at:])
        out.append(dataclasses.replace(turn, content="".join(content)))
    return tuple(out)
