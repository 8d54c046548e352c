"""Images of a request: data URLs and allowed remote URLs turned into `RGBImage`s, within the operator's bounds.

Every bound is checked before the work it bounds: the count before anything, a data URL's base64 length before
it is decoded, a remote body as it arrives (server/generation/image_fetch.py), an image's width x height from its
header before its pixels are decoded. Decoding runs in a worker thread, never on the event loop, and anything
wrong with a client's bytes is a 400 naming the image's request path.

Transparency is composited onto white (as an image viewer on a white page shows it); EXIF orientation is applied,
so a photo reaches the model upright; a GIF or an animated WebP gives its first frame.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from server.engine.base import RGBImage
from server.errors import InvalidRequestError, OverloadedError
from server.generation.image_fetch import check_remote, fetch_all
from server.generation.plan import ImageInput

logger = logging.getLogger(__name__)

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")  # Pillow's names; no other decoder is ever tried
DECODED_MAX_PIXELS = 4 * 1024 * 1024
"""A larger image is scaled down to this many pixels as it is decoded (a JPEG decoded at a reduced scale first):
no projector served looks at more (MiniCPM-V 2.5 takes at most 9 slices of 448 x 448 and an overview; LLaVA one
336 x 336 view), and each image crosses to the model's worker as 3 bytes a pixel."""
ACCEPTED_NAMES = "PNG, JPEG, WebP or GIF"
MAX_DATA_URL_HEADER_CHARS = 256  # `data:<media type>;<parameters>;base64,`
_WHITE = (255, 255, 255, 255)
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


DEFAULT_IMAGE_MEMORY_BYTES = 1024**3  # SLM_IMAGE_MEMORY_BYTES


class ImageMemory:
    """The decoded images of all requests in flight (this process holds them until their generations end), within
    a byte bound: a request whose images would pass it is a 429 before any is decoded, so a flood of image
    requests cannot take the server's memory, whatever each request's own limits allow. Used on the event loop."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held = 0

    def reserve(self, n_bytes: int) -> ImageReservation:
        if self.held + n_bytes > self.max_bytes:
            raise OverloadedError(
                "The server is decoding as many images as it may hold at once; retry shortly.", retry_after=2
            )
        self.held += n_bytes
        return ImageReservation(self, n_bytes)


class ImageReservation:
    """One request's share of ImageMemory: given back once (its generation ended, or it failed)."""

    def __init__(self, memory: ImageMemory, n_bytes: int) -> None:
        self._memory = memory
        self.n_bytes = n_bytes

    def shrink_to(self, n_bytes: int) -> None:
        if n_bytes < self.n_bytes:
            self._memory.held -= self.n_bytes - n_bytes
            self.n_bytes = n_bytes

    def release(self) -> None:
        self.shrink_to(0)


class RequestImages:
    """A request's decoded images and their share of the image memory."""

    def __init__(self) -> None:
        self.decoded: list[RGBImage] = []
        self.reservation: ImageReservation | None = None

    def release(self) -> None:
        if self.reservation is not None:
            self.reservation.release()


@dataclass(frozen=True)
class ImageLimits:
    max_images: int = 16  # images in one request
    max_bytes: int = 5 * 1024 * 1024  # one image's encoded bytes (data URL decoded, or a remote body)
    max_pixels: int = 16 * 1024 * 1024  # one image's width x height, checked from its header before decoding
    remote_hosts: tuple[str, ...] = ()  # hosts (host or host:port) remote images may come from; empty: none
    remote_timeout_s: float = 10.0  # one remote image's whole fetch


async def load_images(
    images: Sequence[ImageInput], limits: ImageLimits, memory: ImageMemory | None = None
) -> tuple[list[RGBImage], ImageReservation | None]:
    """Each image decoded to RGB (a GIF's first frame), in order, off the event loop, and their share of `memory`
    (the caller releases it when it lets go of the images); an InvalidRequestError naming the image's `where` for
    anything refused, an OverloadedError (429) when `memory` has no room for them.

    Every URL is checked (count, scheme, size of a data URL, allowed host) before any is fetched or decoded;
    remote images are fetched at once, then the images are decoded one after another in a worker thread."""
    if len(images) > limits.max_images:
        first_over = images[limits.max_images]
        raise InvalidRequestError(
            f"Invalid value for '{first_over.where}': this request has {len(images)} images; this server accepts "
            f"at most {limits.max_images} in one request.",
            param=first_over.where,
        )
    payloads: list[str | bytes | None] = []  # a data URL's base64 text, or None: fetched
    remote: list[tuple[str, str]] = []
    for image in images:
        if image.url[:5].lower() == "data:":
            payloads.append(_base64_text(image, limits.max_bytes))
        elif image.url[:7].lower() == "http://" or image.url[:8].lower() == "https://":
            check_remote(image.url, image.where, limits.remote_hosts)
            payloads.append(None)
            remote.append((image.url, image.where))
        else:
            raise InvalidRequestError(
                f"Invalid value for '{image.where}': an image URL must be a base64 data URL "
                "(data:image/png;base64,...) or an http(s) URL.",
                param=image.where,
            )
    # the most each image can take decoded, held before any is fetched or decoded, then what they took
    most = len(images) * 3 * min(limits.max_pixels, DECODED_MAX_PIXELS)
    reservation = None if memory is None or not images else memory.reserve(most)
    try:
        fetched = iter(await fetch_all(remote, max_bytes=limits.max_bytes, timeout_s=limits.remote_timeout_s))
        decoded = []
        for image, payload in zip(images, payloads, strict=True):
            data = next(fetched) if payload is None else payload
            decoded.append(await asyncio.to_thread(decode_image, data, image.where, limits))
    except BaseException:
        if reservation is not None:
            reservation.release()
        raise
    if reservation is not None:
        reservation.shrink_to(sum(len(image.pixels) for image in decoded))
    return decoded, reservation


def decode_image(data: str | bytes, where: str, limits: ImageLimits) -> RGBImage:
    """The image in `data` (bytes, or a data URL's base64 text) as RGB pixels. Blocking: call it in a thread."""
    if isinstance(data, str):
        data = _base64_bytes(data, where, limits.max_bytes)
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)  # lazy: reads the header only
    except UnidentifiedImageError:
        raise _invalid(where, f"the image is not a {ACCEPTED_NAMES} image this server can read") from None
    except Image.DecompressionBombError:  # past Pillow's own limit (about 179 M pixels), whatever max_pixels says
        raise _too_many_pixels(where, min(limits.max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or 0))) from None
    except Exception as exc:  # a client's bytes: whatever Pillow makes of them is a 400, never a 500
        raise _unreadable(where, exc) from None
    with image:
        if image.width * image.height > limits.max_pixels:
            raise _too_many_pixels(where, limits.max_pixels, image.size)
        try:
            if image.width * image.height > DECODED_MAX_PIXELS:
                image.draft("RGB", _fitted(image.size))  # JPEG only: decode at 1/2, 1/4 or 1/8 scale, still larger
            rgb = _to_rgb(image)
            if rgb.width * rgb.height > DECODED_MAX_PIXELS:
                rgb = rgb.resize(_fitted(rgb.size), Image.Resampling.BICUBIC)
        except Exception as exc:  # truncated or corrupt data, or EXIF Pillow cannot parse
            raise _unreadable(where, exc) from None
    return RGBImage(rgb.width, rgb.height, rgb.tobytes())


def _fitted(size: tuple[int, int]) -> tuple[int, int]:
    """The size, scaled down to at most DECODED_MAX_PIXELS pixels, its proportions kept."""
    width, height = size
    scale = (DECODED_MAX_PIXELS / (width * height)) ** 0.5
    return max(1, int(width * scale)), max(1, int(height * scale))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES:  # 16-bit grey: scaled to 8 bits (a plain conversion clips it to white)
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    if image.mode == "RGB":
        image.load()
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        with image.convert("RGBA") as rgba, Image.new("RGBA", image.size, _WHITE) as canvas:
            canvas.alpha_composite(rgba)
            return canvas.convert("RGB")
    return image.convert("RGB")


def _base64_text(image: ImageInput, max_bytes: int) -> str:
    """The base64 text of a data URL, refused if it would decode to more than `max_bytes` (before decoding)."""
    url, where = image.url, image.where
    comma = url.find(",", 5, 5 + MAX_DATA_URL_HEADER_CHARS)
    parameters = [part.strip().lower() for part in url[5 : max(comma, 5)].split(";")[1:]]
    if comma < 0 or "base64" not in parameters:
        raise _invalid(where, "a data URL must hold the image in base64 (data:image/png;base64,...)")
    length = len(url) - comma - 1
    if length == 0:
        raise _invalid(where, "the data URL holds no image")
    if length > 4 * -(-max_bytes // 3):
        raise _too_large(where, max_bytes)
    return url[comma + 1 :]


def _base64_bytes(text: str, where: str, max_bytes: int) -> bytes:
    try:  # strict alphabet; the padding may be left out, as some clients do
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(where, "the data URL's base64 does not decode") from None
    if len(data) > max_bytes:
        raise _too_large(where, max_bytes)
    return data


def _invalid(where: str, why: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid value for '{where}': {why}.", param=where)


def _too_large(where: str, max_bytes: int) -> InvalidRequestError:
    return _invalid(where, f"the image is larger than this server accepts ({max_bytes} bytes)")


def _too_many_pixels(where: str, max_pixels: int, size: tuple[int, int] | None = None) -> InvalidRequestError:
    shown = f" ({size[0]} x {size[1]})" if size else ""
    return _invalid(where, f"the image has more pixels{shown} than this server accepts ({max_pixels})")


def _unreadable(where: str, exc: Exception) -> InvalidRequestError:
    logger.info("image at %s not decoded: %s", where, type(exc).__name__)
    return _invalid(where, f"the {ACCEPTED_NAMES} image could not be decoded (truncated or corrupt)")
