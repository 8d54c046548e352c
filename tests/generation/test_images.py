"""Images of a request decoded within the operator's bounds: each accepted format, alpha, EXIF orientation, a GIF's
first frame; every bound checked before the work it bounds (a data URL's length before base64, a header's width x
height before pixels); corrupt data, wrong base64 and other schemes as 400s naming the image's path.
Remote URLs (tests/generation/test_image_fetch.py) are tested against a real local HTTP server."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import threading
import zlib

import pytest
from PIL import Image, ImageFile

from server.errors import InvalidRequestError, OverloadedError
from server.generation import images as images_module
from server.generation.images import ImageLimits, decode_image, load_images
from server.generation.plan import ImageInput

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def load(*urls: str, limits: ImageLimits | None = None):
    inputs = [ImageInput(url, where=f"messages[0].content[{i}].image_url.url") for i, url in enumerate(urls)]
    return asyncio.run(load_images(inputs, limits or ImageLimits()))[0]


def refusal(*urls: str, limits: ImageLimits | None = None) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as refused:
        load(*urls, limits=limits)
    assert refused.value.status_code == 400
    return refused.value


def pixel(image, x: int = 0, y: int = 0) -> tuple[int, ...]:
    at = (y * image.width + x) * 3
    return tuple(image.pixels[at : at + 3])


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims `width` x `height`, followed by a few bytes of IDAT that are never decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize(
    ("fmt", "options", "tolerance"),
    [("PNG", {}, 0), ("JPEG", {"quality": 95}, 8), ("WEBP", {"lossless": True}, 0), ("GIF", {}, 0)],
)
def test_each_accepted_format_decodes_to_rgb(fmt, options, tolerance):
    picture = Image.new("RGB", (5, 3), RED)
    picture.putpixel((4, 2), BLUE)
    [image] = load(data_url(encoded(picture, fmt, **options), "image/whatever"))  # the bytes decide, not the type
    assert (image.width, image.height, len(image.pixels)) == (5, 3, 5 * 3 * 3)
    for (x, y), expected in (((0, 0), RED), ((1, 1), RED)):
        assert all(abs(a - b) <= tolerance for a, b in zip(pixel(image, x, y), expected, strict=True))
    if fmt != "JPEG":  # JPEG's chroma subsampling smears one pixel
        assert pixel(image, 4, 2) == BLUE


def test_a_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (4, 4), color) for color in (RED, BLUE)]
    gif = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(gif)).n_frames == 2
    [image] = load(data_url(gif, "image/gif"))
    assert pixel(image) == RED


def test_transparency_is_composited_onto_white():
    half_red = Image.new("RGBA", (2, 2), (255, 0, 0, 128))
    clear = Image.new("LA", (2, 2), (0, 0))
    gif = Image.new("P", (2, 2), 1)
    gif.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    transparent_gif = encoded(gif, "GIF", transparency=1)
    images = load(*(data_url(encoded(i, "PNG")) for i in (half_red, clear)), data_url(transparent_gif))
    r, g, b = pixel(images[0])
    assert r == 255 and 126 <= g <= 128 and 126 <= b <= 128
    assert pixel(images[1]) == WHITE
    assert pixel(images[2]) == WHITE


def test_sixteen_bit_grey_is_scaled_not_clipped():
    [image] = load(data_url(encoded(Image.new("I;16", (2, 2), 40000), "PNG")))
    assert pixel(image) == (156, 156, 156)


def test_exif_orientation_is_applied():
    picture = Image.new("RGB", (4, 2), RED)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show it
    [image] = load(data_url(encoded(picture, "JPEG", exif=exif.tobytes()), "image/jpeg"))
    assert (image.width, image.height) == (2, 4)


def test_decoding_runs_off_the_event_loop(monkeypatch):
    threads = []

    def recording(*args):
        threads.append(threading.get_ident())
        return decode_image(*args)

    monkeypatch.setattr(images_module, "decode_image", recording)
    load(data_url(encoded(Image.new("RGB", (2, 2), RED), "PNG")))
    assert threads and threads[0] != threading.get_ident()  # asyncio.run's loop runs in this thread


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"not an image at all", "is not a PNG, JPEG, WebP or GIF image"),
        (encoded(Image.new("RGB", (2, 2)), "BMP"), "is not a PNG, JPEG, WebP or GIF image"),
        (encoded(Image.new("RGB", (2, 2)), "TIFF"), "is not a PNG, JPEG, WebP or GIF image"),
        (encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")[:-300], "could not be decoded"),
        (encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")[:400], "could not be decoded"),
        (png_header(0, 0), "not a PNG, JPEG, WebP or GIF"),
    ],
    ids=["garbage", "bmp", "tiff", "truncated-png", "truncated-jpeg", "zero-size"],
)
def test_unreadable_bytes_are_a_400_naming_the_image(data, says):
    error = refusal(data_url(encoded(Image.new("RGB", (1, 1)), "PNG")), data_url(data))
    assert error.param == "messages[0].content[1].image_url.url"
    assert says in error.message and error.param in error.message


def test_wrong_base64_and_other_data_urls():
    assert "base64 does not decode" in refusal("data:image/png;base64,iVBOR@@@").message
    assert "base64 does not decode" in refusal("data:image/png;base64,aé==").message
    assert "in base64" in refusal("data:image/png,%89PNG").message  # percent-encoded, not base64
    assert "in base64" in refusal("data:" + "x" * 1000).message  # no comma within the header's bound
    assert "holds no image" in refusal("data:image/png;base64,").message


def test_unpadded_base64_is_accepted():
    url = data_url(encoded(Image.new("RGB", (3, 1), RED), "PNG")).rstrip("=")
    assert pixel(load(url)[0]) == RED


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "a.png", "javascript:alert(1)"])
def test_other_schemes_are_refused(url):
    error = refusal(url)
    assert error.param == "messages[0].content[0].image_url.url"
    assert "data URL" in error.message and "http(s)" in error.message


def test_a_data_url_over_the_byte_limit_is_refused_before_its_base64_is_decoded(monkeypatch):
    decoded = []
    monkeypatch.setattr(images_module.base64, "b64decode", lambda *a, **k: decoded.append(a))
    limits = ImageLimits(max_bytes=1024)
    error = refusal("data:image/png;base64," + "A" * (4 * 342 + 4), limits=limits)
    assert "larger than this server accepts (1024 bytes)" in error.message
    assert decoded == []


def test_the_decoded_size_is_checked_exactly():
    limits = ImageLimits(max_bytes=1024)
    # 1025 bytes: the same base64 length as 1024 (both 1368 characters), refused once decoded
    assert "(1024 bytes)" in refusal(data_url(b"\0" * 1025), limits=limits).message
    assert "not a PNG" in refusal(data_url(b"\0" * 1024), limits=limits).message


@pytest.mark.parametrize(("width", "height"), [(5000, 5000), (100_000, 100_000)])
def test_too_many_pixels_is_refused_from_the_header_without_decoding(monkeypatch, width, height):
    def no_decoding(self):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    error = refusal(data_url(png_header(width, height)))  # the default: 16 Mi pixels
    assert "more pixels" in error.message and f"({16 * 1024 * 1024})" in error.message
    assert error.param == "messages[0].content[0].image_url.url"


def test_an_image_at_the_pixel_limit_is_served():
    limits = ImageLimits(max_pixels=12)
    [image] = load(data_url(encoded(Image.new("RGB", (4, 3), RED), "PNG")), limits=limits)
    assert (image.width, image.height) == (4, 3)
    error = refusal(data_url(encoded(Image.new("RGB", (13, 1), RED), "PNG")), limits=limits)
    assert "(13 x 1)" in error.message


def test_too_many_images_names_the_first_over_the_count_before_decoding_any():
    limits = ImageLimits(max_images=2)
    error = refusal("data:image/png;base64,@", "data:image/png;base64,@", "data:,", limits=limits)
    assert error.param == "messages[0].content[2].image_url.url"
    assert "3 images" in error.message and "at most 2" in error.message
    none = ImageLimits(max_images=0)
    assert refusal("data:image/png;base64,AAAA", limits=none).param == "messages[0].content[0].image_url.url"


def test_every_url_is_checked_before_any_image_is_decoded(monkeypatch):
    monkeypatch.setattr(images_module, "decode_image", lambda *a: pytest.fail("decoded"))
    error = refusal(data_url(encoded(Image.new("RGB", (2, 2)), "PNG")), "https://example.com/a.png")
    assert error.param == "messages[0].content[1].image_url.url"


def test_images_come_back_in_order():
    colors = [RED, BLUE, WHITE]
    loaded = load(*(data_url(encoded(Image.new("RGB", (1, 1), c), "PNG")) for c in colors))
    assert [pixel(image) for image in loaded] == colors
    assert loaded[0].digest != loaded[1].digest


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_large_image_is_scaled_down_as_it_is_decoded_keeping_its_proportions(monkeypatch, fmt):
    monkeypatch.setattr(images_module, "DECODED_MAX_PIXELS", 100 * 100)
    picture = Image.new("RGB", (400, 200), RED)
    [image] = load(data_url(encoded(picture, fmt), f"image/{fmt.lower()}"))
    assert image.width * image.height <= 100 * 100
    assert abs(image.width / image.height - 2) < 0.05
    assert image.width >= 130  # scaled to fit, not past it (a JPEG's reduced-scale decode is resized after)
    assert max(abs(a - b) for a, b in zip(pixel(image), RED, strict=True)) <= 8


def test_the_image_memory_is_reserved_before_decoding_and_trued_up_after():
    memory = images_module.ImageMemory(max_bytes=10**9)
    inputs = [ImageInput(data_url(encoded(Image.new("RGB", (4, 3), RED), "PNG")), "messages[0].content[0]")] * 2
    decoded, reservation = asyncio.run(load_images(inputs, ImageLimits(), memory))
    assert [(image.width, image.height) for image in decoded] == [(4, 3), (4, 3)]
    assert memory.held == reservation.n_bytes == 2 * 4 * 3 * 3
    reservation.release()
    reservation.release()  # once only
    assert memory.held == 0


def test_images_that_would_pass_the_image_memory_are_a_429_before_any_is_decoded(monkeypatch):
    def no_decoding(*args):
        raise AssertionError("decoded")

    monkeypatch.setattr(images_module, "decode_image", no_decoding)
    memory = images_module.ImageMemory(max_bytes=3 * 1024 * 1024)
    held = memory.reserve(1)
    inputs = [ImageInput(data_url(encoded(Image.new("RGB", (4, 3), RED), "PNG")), "messages[0].content[0]")]
    with pytest.raises(OverloadedError):
        asyncio.run(load_images(inputs, ImageLimits(max_pixels=1024 * 1024), memory))
    assert memory.held == 1
    held.release()


def test_a_refused_image_gives_its_requests_reservation_back():
    memory = images_module.ImageMemory(max_bytes=10**9)
    inputs = [
        ImageInput(data_url(encoded(Image.new("RGB", (4, 3), RED), "PNG")), "messages[0].content[0]"),
        ImageInput(data_url(b"not an image"), "messages[0].content[1]"),
    ]
    with pytest.raises(InvalidRequestError):
        asyncio.run(load_images(inputs, ImageLimits(), memory))
    assert memory.held == 0
