"""A grammar being compiled holds nothing: the model's other requests are served meanwhile, promptly."""

from __future__ import annotations

import asyncio
import time

import httpx

from server.app import create_app
from server.config import Settings
from server.models.registry import ModelRegistry
from tests.conftest import FakeLoader
from tests.fakes import FakeEngine, fake_spec

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}


class SlowCompiler(FakeEngine):
    """Its grammar compilation waits until the test lets it go, as a big schema's would take its time."""

    compiling: asyncio.Event
    release: asyncio.Event

    async def compile_grammar(self, grammar: str) -> None:
        self.compiling.set()
        await self.release.wait()
        await super().compile_grammar(grammar)


def test_a_normal_request_is_served_while_a_grammar_compiles(tmp_path):
    loader = FakeLoader()
    engine = SlowCompiler()

    def load(spec):
        loader.engines[spec.name] = engine
        return engine

    app = create_app(Settings(models_file=tmp_path / "unused.yaml"), registry=ModelRegistry([fake_spec("m")], load))

    async def scenario() -> float:
        engine.compiling, engine.release = asyncio.Event(), asyncio.Event()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
            messages = [{"role": "user", "content": "Hi"}]
            constrained = asyncio.create_task(
                client.post("/v1/chat/completions", json={"model": "m", "messages": messages, "response_format": fmt})
            )
            await asyncio.wait_for(engine.compiling.wait(), 10)
            started = time.monotonic()
            normal = await asyncio.wait_for(
                client.post("/v1/chat/completions", json={"model": "m", "messages": messages}), 10
            )
            latency = time.monotonic() - started
            assert normal.status_code == 200 and normal.json()["choices"][0]["message"]["content"] == "Hello, world!"
            assert not constrained.done()  # still compiling: the normal request did not wait for it
            engine.release.set()
            assert (await constrained).status_code == 200
            return latency

    latency = asyncio.run(scenario())
    # The compile is still blocked when the normal request returns, so its latency is its own (generous bound).
    assert latency < 2.0
