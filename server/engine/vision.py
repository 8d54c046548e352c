"""Images through llama.cpp's multimodal library (libmtmd): a model's projector (`mmproj`), a prompt of text and
images turned into chunks, an image chunk encoded into embeddings, and embeddings decoded into one sequence's KV.

How a scheduler serves a prompt with images (the pieces below, in this order):
1. `projector.tokenize(parts)` once per request: text pieces and `RGBImage`s in prompt order become a
   `VisionPrompt`, a list of `TextChunk`s and `ImageChunk`s. One image can give several image chunks with text
   between them (MiniCPM-V: an overview and slices, framed by <image>/<slice> tokens).
2. `projector.encode(chunk)` for each image chunk: an (n_tokens, n_embd) float32 array. It is the slow part (the
   vision tower) and touches no llama context, so it runs outside the scheduler's step (another thread); calls
   are serialized per projector.
3. Each image chunk's rows go into the sequence's KV through server/engine/image_feed.py, at the positions
   following the text before it, at most n_batch rows per llama_decode of their own (a batch carries either
   tokens or embeddings, never both): the scheduler interleaves these calls with its token steps (`ImageFeed`).
   The projector types we load decode their images causally at ordinary positions (one position per row), so
   the text after an image continues at position + n_tokens.
4. Prefix cache: `VisionPrompt.cache_tokens()` stands each image row in for a token id: negative ids derived from
   a hash of the image's pixels and the chunk's place in it, so the same image after the same text matches, and
   a different image never does. A cached prefix can end inside an image: decode the rest from its rows on.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import mtmd_cpp

from server.engine.base import RGBImage
from server.engine.gguf_header import GGUFProblem
from server.engine.projector_check import ProjectorInfo, check_projector
from server.errors import InvalidRequestError, ModelUnavailableError

logger = logging.getLogger(__name__)
native_logger = logging.getLogger("server.engine.vision.native")

_NATIVE_LEVELS = {3: logging.WARNING, 4: logging.ERROR}
_NATIVE_LOG_MAX_BYTES = 500
_PSEUDO_SPAN = 1 << 62  # pseudo token ids are -1 .. -2**62: never a real token id


@llama_cpp.llama_log_callback
def _native_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    # the clip loader logs a line per tensor: DEBUG, unless a warning or an error
    text = text.rstrip()
    line = text[:_NATIVE_LOG_MAX_BYTES].decode("utf-8", "replace")
    native_logger.log(_NATIVE_LEVELS.get(level, logging.DEBUG), "%s", line)


@dataclass(frozen=True)
class TextChunk:
    tokens: tuple[int, ...]

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


@dataclass(eq=False)
class ImageChunk:
    """Image embeddings to come, `n_tokens` rows (each one position). `key`: the image's digest and the chunk's
    index within that image (an overview and its slices are separate chunks of one image)."""

    n_tokens: int
    key: str
    image_index: int  # which image of the prompt it comes from
    handle: int = field(repr=False)  # the mtmd chunk (a copy this object owns until VisionPrompt.close)

    def cache_tokens(self) -> tuple[int, ...]:
        base = int.from_bytes(hashlib.sha256(self.key.encode()).digest()[:8], "little")
        return tuple(-1 - (base + i) % _PSEUDO_SPAN for i in range(self.n_tokens))


@dataclass(eq=False)
class VisionPrompt:
    chunks: list[TextChunk | ImageChunk]
    n_images: int

    @property
    def n_tokens(self) -> int:
        """Positions the prompt takes, image rows included (what usage.prompt_tokens counts)."""
        return sum(chunk.n_tokens for chunk in self.chunks)

    def cache_tokens(self) -> list[int]:
        """The prompt as the prefix cache sees it: text token ids, and a pseudo id (negative) per image row."""
        out: list[int] = []
        for chunk in self.chunks:
            out.extend(chunk.tokens if isinstance(chunk, TextChunk) else chunk.cache_tokens())
        return out

    def close(self) -> None:
        """Free the image chunks (their preprocessed pixels); encode no chunk of this prompt afterwards."""
        for chunk in self.chunks:
            if isinstance(chunk, ImageChunk) and chunk.handle:
                mtmd_cpp.mtmd_input_chunk_free(chunk.handle)
                chunk.handle = 0


class Projector:
    """A loaded projector, bound to its language model. Thread-safe: encodes are serialized."""

    def __init__(self, ctx: int, info: ProjectorInfo, n_embd: int) -> None:
        self._ctx = ctx
        self.info = info
        self.n_embd = n_embd  # the width of one row of embeddings: the language model's input width
        self.causal = not mtmd_cpp.mtmd_decode_use_non_causal(ctx, None)
        self._lock = threading.Lock()

    def tokenize(
        self, parts: Sequence[str | RGBImage], *, add_special: bool = False, parse_special: bool = True
    ) -> VisionPrompt:
        """The chunks of a prompt given as text pieces and images in order (no marker text: an image is a part
        of its own, so no text a client sends can stand for one). `add_special` adds the model's BOS as the
        plain tokenizer would; `parse_special` reads control-token text (a template's) as control tokens.
        InvalidRequestError when an image cannot be made into chunks."""
        with self._lock:  # an encode may be running on the encoder's thread: one call into the context at a time
            return self._tokenize(parts, add_special=add_special, parse_special=parse_special)

    def _tokenize(self, parts: Sequence[str | RGBImage], *, add_special: bool, parse_special: bool) -> VisionPrompt:
        keep: list[object] = []  # what the C structures point into, alive until mtmd_tokenize_from_parts returns
        pointers = (ctypes.POINTER(mtmd_cpp.mtmd_input_part) * max(1, len(parts)))()
        bitmaps: list[int] = []
        chunks = None
        try:
            for i, item in enumerate(parts):
                part = mtmd_cpp.mtmd_input_part()
                if isinstance(item, RGBImage):
                    part.bitmap = self._bitmap(item, len(bitmaps), bitmaps)
                else:
                    data = item.encode("utf-8")
                    text = mtmd_cpp.mtmd_input_text(data, len(data), False, parse_special)
                    keep += [data, text]
                    part.text = ctypes.pointer(text)
                keep.append(part)
                pointers[i] = ctypes.pointer(part)
            chunks = mtmd_cpp.mtmd_input_chunks_init()
            rc = mtmd_cpp.mtmd_tokenize_from_parts(self._ctx, chunks, pointers, len(parts), add_special)
            if rc != 0:
                raise InvalidRequestError(f"An image of the request could not be prepared for the model ({rc}).")
            return VisionPrompt(_collect(chunks), len(bitmaps))
        finally:
            if chunks:
                mtmd_cpp.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                mtmd_cpp.mtmd_bitmap_free(bitmap)

    def encode(self, chunk: ImageChunk) -> np.ndarray:
        """The chunk's embeddings: a new (n_tokens, n_embd) float32 array."""
        if not chunk.handle:
            raise ValueError("the image chunk was freed")
        with self._lock:
            rc = mtmd_cpp.mtmd_encode_chunk(self._ctx, chunk.handle)
            if rc != 0:
                raise RuntimeError(f"mtmd_encode_chunk returned {rc}")
            pointer = mtmd_cpp.mtmd_get_output_embd(self._ctx)
            rows = np.ctypeslib.as_array(pointer, shape=(chunk.n_tokens * self.n_embd,))
            return rows.reshape(chunk.n_tokens, self.n_embd).copy()

    def free(self) -> None:
        if self._ctx:
            mtmd_cpp.mtmd_free(self._ctx)
            self._ctx = 0

    @staticmethod
    def _bitmap(image: RGBImage, index: int, owned: list[int]) -> int:
        data = (ctypes.c_uint8 * len(image.pixels)).from_buffer_copy(image.pixels)
        bitmap = mtmd_cpp.mtmd_bitmap_init(image.width, image.height, data)
        if not bitmap:
            raise MemoryError("mtmd_bitmap_init failed")
        owned.append(bitmap)
        mtmd_cpp.mtmd_bitmap_set_id(bitmap, f"{index} {image.digest}".encode())
        return bitmap


def _collect(chunks: int) -> list[TextChunk | ImageChunk]:
    """Our own copies of mtmd's chunks: text as token tuples, image chunks as owned copies keyed by image. Each
    bitmap's id is "<index in the prompt> <digest>" (Projector._bitmap), so an image's slices are told apart
    from the same picture sent twice."""
    out: list[TextChunk | ImageChunk] = []
    seen: dict[bytes, int] = {}  # chunks so far of each image
    try:
        for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
            chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
            kind = mtmd_cpp.mtmd_input_chunk_get_type(chunk)
            if kind == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                tokens = mtmd_cpp.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                out.append(TextChunk(tuple(tokens[j] for j in range(count.value))))
                continue
            if kind != mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                raise InvalidRequestError("The request holds media this model does not take.")
            chunk_id = mtmd_cpp.mtmd_input_chunk_get_id(chunk) or b""
            index, _, digest = chunk_id.decode().partition(" ")
            within = seen.get(chunk_id, 0)
            seen[chunk_id] = within + 1
            copy = mtmd_cpp.mtmd_input_chunk_copy(chunk)
            if not copy:
                raise MemoryError("mtmd_input_chunk_copy failed")
            n_tokens = mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk)
            out.append(ImageChunk(n_tokens, f"{digest}:{within}", int(index), copy))
    except BaseException:
        VisionPrompt(out, 0).close()
        raise
    return out


def load_projector(path: Path, model: llama_cpp.llama_model_p, *, model_name: str, n_threads: int = 1) -> Projector:
    """Check the projector file (projector_check) and load it for `model` on the CPU. ModelUnavailableError
    (with the reason, for a file the check refuses) when it cannot be used; never a crash for the damage the
    check covers."""
    n_embd = llama_cpp.llama_model_n_embd_inp(model)
    try:
        info = check_projector(path, n_embd_text=n_embd)
    except OSError as exc:
        logger.error("model %s: projector %s: %s", model_name, path, exc)
        raise ModelUnavailableError(
            f"The projector of model `{model_name}` is not available; see the server log."
        ) from exc
    except GGUFProblem as exc:
        logger.error("model %s: projector %s: %s", model_name, path, exc)
        raise ModelUnavailableError(f"The projector of model `{model_name}` cannot be loaded: {exc}.") from exc
    mtmd_cpp.mtmd_log_set(_native_log, ctypes.c_void_p(0))
    params = mtmd_cpp.mtmd_context_params_default()
    params.use_gpu = False
    params.n_threads = max(1, n_threads)
    params.print_timings = False
    ctx = mtmd_cpp.mtmd_init_from_file(str(path).encode(), model, params)
    if not ctx:
        raise ModelUnavailableError(
            f"The projector of model `{model_name}` failed to load in llama.cpp; see the server log."
        )
    if mtmd_cpp.mtmd_decode_use_mrope(ctx) or not mtmd_cpp.mtmd_support_vision(ctx):
        mtmd_cpp.mtmd_free(ctx)
        raise ModelUnavailableError(
            f"The projector of model `{model_name}` needs positions this server does not give (M-RoPE)."
        )
    logger.info("model %s: projector %s (%s, %d wide)", model_name, path, info.projector_type, info.n_embd_out)
    return Projector(ctx, info, n_embd)
