"""Remote image URLs against a real HTTP server on 127.0.0.1: off by default (the 400 names the setting), fetched
only from allowed hosts, within a byte cap and a time limit for the whole fetch, no redirect followed."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from server.errors import InvalidRequestError
from server.generation.image_fetch import check_remote
from server.generation.images import ImageLimits, load_images
from server.generation.plan import ImageInput

CAP = 4096


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (3, 2), color).save(out, format="PNG")
    return out.getvalue()


RED_PNG, BLUE_PNG = png((255, 0, 0)), png((0, 0, 255))


class ImageServer:
    """A local HTTP server whose paths misbehave in the ways a remote image host can; it counts its requests."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.paths.append(self.path)
                route = getattr(server, "route_" + self.path.strip("/").split(".")[0], None)
                if route is None:
                    self.send_error(404)
                else:
                    route(self)

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.http.handle_error = lambda request, address: None  # a client that left mid-trickle: expected
        self.host = f"127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://{self.host}/{path}"

    @staticmethod
    def _send(handler, body: bytes, *, length: bool = True, status: int = 200, **headers: str) -> None:
        handler.send_response(status)
        if length:
            handler.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.end_headers()
        handler.wfile.write(body)

    def route_red(self, handler) -> None:
        self._send(handler, RED_PNG, Content_Type="image/png")

    def route_blue(self, handler) -> None:
        self._send(handler, BLUE_PNG, Content_Type="text/plain")  # the bytes decide, not the type

    def route_big(self, handler) -> None:
        self._send(handler, b"\0" * (CAP + 1))

    def route_big_unannounced(self, handler) -> None:  # no Content-Length: the body ends when the connection does
        handler.close_connection = True
        self._send(handler, b"\0" * (CAP * 8), length=False)

    def route_redirect(self, handler) -> None:
        self._send(handler, b"", status=302, Location=self.url("red.png"))

    def route_gone(self, handler) -> None:
        self._send(handler, b"gone", status=410)

    def route_stall(self, handler) -> None:  # headers, then nothing until the test ends
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.flush()
        self.stop.wait()

    def route_trickle(self, handler) -> None:  # a byte every 20 ms: no single read ever waits long
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        while not self.stop.wait(0.02):
            handler.wfile.write(b"\0")
            handler.wfile.flush()


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.http.shutdown()
        server.http.server_close()
        server.thread.join(timeout=5)


def load(*urls: str, limits: ImageLimits):
    inputs = [ImageInput(url, where=f"input[0].content[{i}].image_url") for i, url in enumerate(urls)]
    return asyncio.run(load_images(inputs, limits))[0]


def refusal(*urls: str, limits: ImageLimits) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as refused:
        load(*urls, limits=limits)
    assert refused.value.status_code == 400
    return refused.value


def allowing(server: ImageServer, **limits) -> ImageLimits:
    return ImageLimits(remote_hosts=(server.host,), **{"max_bytes": CAP, "remote_timeout_s": 5.0, **limits})


def test_remote_urls_are_off_by_default_and_the_400_says_how_to_allow_them(image_server):
    error = refusal(image_server.url("red.png"), limits=ImageLimits())
    assert error.param == "input[0].content[0].image_url"
    assert "SLM_REMOTE_IMAGE_HOSTS" in error.message and "data URL" in error.message
    assert image_server.paths == []


def test_an_allowed_host_is_fetched_in_order(image_server):
    red, blue = load(image_server.url("red.png"), image_server.url("blue.png"), limits=allowing(image_server))
    assert red.pixels[:3] == b"\xff\x00\x00" and blue.pixels[:3] == b"\x00\x00\xff"
    assert sorted(image_server.paths) == ["/blue.png", "/red.png"]


def test_a_data_url_and_a_remote_image_together(image_server):
    data = "data:image/png;base64," + base64.b64encode(BLUE_PNG).decode()
    red, blue = load(image_server.url("red.png"), data, limits=allowing(image_server))
    assert (red.pixels[:3], blue.pixels[:3]) == (b"\xff\x00\x00", b"\x00\x00\xff")


@pytest.mark.parametrize(
    "hosts",
    [("127.0.0.1",), ("127.0.0.1:1",), ("localhost",), ("example.com", "127.0.0.2:{port}")],
    ids=["default-port-only", "other-port", "other-name", "others"],
)
def test_a_host_not_allowed_is_refused_without_a_request(image_server, hosts):
    port = image_server.host.rsplit(":", 1)[1]
    limits = ImageLimits(remote_hosts=tuple(host.format(port=port) for host in hosts))
    error = refusal(image_server.url("red.png"), limits=limits)
    assert "not fetched from '127.0.0.1'" in error.message and "SLM_REMOTE_IMAGE_HOSTS" in error.message
    assert image_server.paths == []


def test_allowed_hosts_match_exactly_but_ignore_case():
    check_remote("https://CDN.Example.com/a.png", "w", ("cdn.example.COM",))
    check_remote("http://cdn.example.com:80/a.png", "w", ("cdn.example.com",))
    check_remote("http://[::1]:8080/a.png", "w", ("[::1]:8080",))
    for url in ("https://cdn.example.com:8443/a.png", "https://evil-cdn.example.com/a.png", "https://example.com/"):
        with pytest.raises(InvalidRequestError, match="not fetched from"):
            check_remote(url, "w", ("cdn.example.com",))


@pytest.mark.parametrize(
    ("url", "says"),
    [("http://user:pw@{host}/red.png", "credentials"), ("http://{host}:99999/red.png", "not a valid http(s) URL")],
)
def test_credentials_and_broken_urls_are_refused(image_server, url, says):
    error = refusal(url.format(host=image_server.host), limits=allowing(image_server))
    assert says in error.message
    assert image_server.paths == []


@pytest.mark.parametrize("path", ["a\x00b.png", "a\nb.png", "a\x7fb.png"], ids=["nul", "newline", "del"])
def test_control_characters_in_an_allowed_url_are_a_400_not_a_500(image_server, path):
    error = refusal(image_server.url(path), limits=allowing(image_server))
    assert error.param == "input[0].content[0].image_url"


@pytest.mark.parametrize("path", ["big", "big_unannounced"])
def test_a_body_over_the_cap_is_refused(image_server, path):
    error = refusal(image_server.url(path), limits=allowing(image_server))
    assert f"larger than this server accepts ({CAP} bytes)" in error.message
    assert error.param == "input[0].content[0].image_url"


def test_a_redirect_is_not_followed(image_server):
    error = refusal(image_server.url("redirect"), limits=allowing(image_server))
    assert "redirect (HTTP 302)" in error.message
    assert image_server.paths == ["/redirect"]


def test_an_error_status_is_a_400_naming_the_image(image_server):
    error = refusal(image_server.url("red.png"), image_server.url("gone"), limits=allowing(image_server))
    assert error.param == "input[0].content[1].image_url" and "HTTP 410" in error.message
    assert "HTTP 404" in refusal(image_server.url("nothing.png"), limits=allowing(image_server)).message


@pytest.mark.parametrize("path", ["stall", "trickle"])
def test_the_time_limit_covers_the_whole_fetch(image_server, path):
    error = refusal(image_server.url(path), limits=allowing(image_server, remote_timeout_s=0.3, max_bytes=10**6))
    assert "did not arrive within 0.3 s" in error.message
    assert error.param == "input[0].content[0].image_url"


def test_a_host_that_refuses_connections_is_a_400():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens there once it closes
    error = refusal(f"http://127.0.0.1:{port}/red.png", limits=ImageLimits(remote_hosts=(f"127.0.0.1:{port}",)))
    assert "could not be fetched" in error.message
