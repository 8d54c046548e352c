"""A small HTTP server speaking the part of the Hugging Face Hub protocol that `hf_hub_download` uses.

HEAD and GET on `/{repo_id}/resolve/{revision}/{filename}` with the hub's headers (X-Repo-Commit, X-Linked-Etag
carrying the LFS sha256, X-Linked-Size) and byte ranges, so downloads can be resumed. A file can advertise a
sha256 that its bytes do not have (a corrupted download), and the first GET of a file can stall after some bytes
until the test lets it go (an interrupted download)."""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass
class HubFile:
    content: bytes
    advertised_sha256: str | None = None  # None: the real sha256 of content
    stall_after: int | None = None  # the first GET sends this many bytes, then waits for `release`
    sent_before_stall: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def sha256(self) -> str:
        return self.advertised_sha256 or hashlib.sha256(self.content).hexdigest()


class FakeHub:
    def __init__(self, port: int = 0) -> None:
        self.files: dict[tuple[str, str], HubFile] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, repo_id: str, filename: str, hub_file: HubFile) -> HubFile:
        self.files[(repo_id, filename)] = hub_file
        return hub_file

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for hub_file in self.files.values():
            hub_file.release.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
                match = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
                hub_file = hub.files.get((match.group(1), match.group(3))) if match else None
                if hub_file is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                content = hub_file.content
                start = 0
                ranged = RANGE.fullmatch(self.headers.get("Range") or "")
                if ranged and body:
                    start = int(ranged.group(1))
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hub_file.sha256}"')
                self.send_header("X-Linked-Etag", f'"{hub_file.sha256}"')
                self.send_header("X-Linked-Size", str(len(content)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(content) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
                self.end_headers()
                if not body:
                    return
                payload = content[start:]
                if hub_file.stall_after is not None and not hub_file.sent_before_stall.is_set():
                    self.wfile.write(payload[: hub_file.stall_after])
                    self.wfile.flush()
                    hub_file.sent_before_stall.set()
                    hub_file.release.wait()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        return Handler
