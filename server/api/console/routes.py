"""Serves the console's files: `/` and the console's page paths answer index.html, `/ui/<file>` one of the files
shipped in static/ (an allow-list read once from the package: no path from the request ever reaches the disk)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from server.errors import NotFoundError

# The pages the console's own links point to; each answers index.html, whose script shows the page its path names.
PAGES = ("/", "/ui", "/ui/", "/ui/playground", "/ui/models", "/ui/live")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Everything from this origin only, no inline script or style: model output is only ever text (textContent), and
# even so a page that could be made to run a script could not send anything elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated each time: an upgraded server never runs an old script
}


def static_files() -> dict[str, tuple[bytes, str]]:
    """The shipped files by name: their bytes and content type (only the types in CONTENT_TYPES)."""
    folder = resources.files(__package__) / "static"
    files = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            files[entry.name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    return files


def console_routes() -> APIRouter:
    files = static_files()
    index, _ = files["index.html"]
    router = APIRouter(include_in_schema=False)  # pages, not API operations

    async def page() -> Response:
        return Response(index, media_type=CONTENT_TYPES[".html"], headers=SECURITY_HEADERS)

    for path in PAGES:
        router.add_api_route(path, page, methods=["GET"])

    @router.get("/ui/{name}")
    async def static_file(name: str) -> Response:
        if name not in files:
            raise NotFoundError(f"The console has no file `{name[:100]}`.")
        body, content_type = files[name]
        return Response(body, media_type=content_type, headers=SECURITY_HEADERS)

    return router
