"""The console's files: served by the app at / and /ui/..., from an allow-list, under a same-origin-only CSP, with
nothing in them that would load from another origin."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.api.console.routes import PAGES, static_files
from server.app import create_app
from server.config import Settings
from server.models.registry import ModelRegistry
from tests.conftest import FakeLoader
from tests.fakes import fake_spec

STATIC = Path(__file__).parents[3] / "server" / "api" / "console" / "static"
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name in createElementNS and <svg xmlns>, never fetched


def make_client(tmp_path: Path, **settings) -> TestClient:
    registry = ModelRegistry([fake_spec("fake-model")], FakeLoader())
    return TestClient(create_app(Settings(models_file=tmp_path / "unused.yaml", **settings), registry=registry))


@pytest.mark.parametrize("path", PAGES)
def test_every_page_path_answers_the_console_with_a_same_origin_policy(tmp_path, path):
    with make_client(tmp_path) as client:
        response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>slm-server console</title>" in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ],
)
def test_files_are_served_with_their_content_type(tmp_path, name, content_type):
    with make_client(tmp_path) as client:
        response = client.get(f"/ui/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.content == (STATIC / name).read_bytes()


@pytest.mark.parametrize(
    "path", ["/ui/missing.js", "/ui/..%2F..%2Fpyproject.toml", "/ui/%2e%2e/app.py", "/ui/index.html%00", "/ui/static"]
)
def test_only_shipped_files_are_served(tmp_path, path):
    with make_client(tmp_path) as client:
        response = client.get(path)
    assert response.status_code == 404
    assert "error" in response.json()


def test_the_files_need_no_key_where_the_api_does(tmp_path):
    with make_client(tmp_path, api_keys=["client-key"], admin_keys=["admin-key"]) as client:
        assert client.get("/").status_code == 200
        assert client.get("/ui/app.js").status_code == 200
        assert client.get("/models").status_code == 401  # what the console then asks a key for


def test_the_console_is_not_an_api_operation(tmp_path):
    with make_client(tmp_path) as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path == "/" or path.startswith("/ui")]


def test_every_file_the_page_references_is_shipped():
    index = (STATIC / "index.html").read_text()
    referenced = set(re.findall(r'(?:src|href)="/ui/([^"/]+\.[a-z]+)"', index))
    imported = set()
    for script in STATIC.glob("*.js"):
        imported |= set(re.findall(r'from "\./([^"]+)"', script.read_text()))
    shipped = set(static_files())
    assert referenced and imported
    assert referenced | imported <= shipped
    assert {path.name for path in STATIC.iterdir()} == shipped  # nothing in static/ that is not served


def test_nothing_refers_to_another_origin_and_nothing_runs_inline():
    for path in STATIC.iterdir():
        text = path.read_text().replace(SVG_NAMESPACE, "")
        assert not re.search(r"(?i)\b(?:https?:|wss?:)|[\"'(]//", text), f"{path.name} names another origin"
        assert "innerHTML" not in text and "eval(" not in text, path.name
    index = (STATIC / "index.html").read_text()
    assert "<script>" not in index  # scripts come from files only
    assert not re.search(r"\son[a-z]+=", index)  # no inline event handlers
    assert "style=" not in index
