"""Schemathesis fuzzes the app's own OpenAPI (fake engines behind the real app): no 5xx, OpenAI-shaped errors.

Bounded: a fixed number of generated examples per operation, derandomized so a run is repeatable.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra")
from hypothesis import HealthCheck, settings  # noqa: E402

from server.app import create_app  # noqa: E402
from server.config import Settings  # noqa: E402
from server.registry import ModelRegistry  # noqa: E402
from tests.conftest import FakeLoader  # noqa: E402
from tests.fakes import fake_spec  # noqa: E402

app = create_app(Settings(), registry=ModelRegistry([fake_spec("fake-model", "gpt-4o-mini")], FakeLoader()))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_openai_error_bodies(case):
    response = case.call()
    assert response.status_code < 500, response.text
    if case.path.startswith("/v1") and response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert {"message", "type", "param", "code"} <= set(body["error"]), body
