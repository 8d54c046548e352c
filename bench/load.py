"""An async HTTP load generator for OpenAI-compatible chat servers: fixed prompts, fixed output length, greedy.

Every request streams, so time to first token is measured where the client sees it. End-of-sequence tokens are
banned with `logit_bias` (which both slm-server and llama-cpp-python's server honour), so every request generates
exactly `max_tokens` tokens and both servers do the same work.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass

import httpx

PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colors.",
    "Explain gravity to a child.",
    "What is 12 times 12?",
    "Name a famous painter and one of their works.",
    "Give me a simple recipe for tea.",
    "Why is the sky blue?",
)


@dataclass(frozen=True)
class Result:
    ttft_s: float
    latency_s: float
    chunks: int


@dataclass(frozen=True)
class LevelStats:
    concurrency: int
    requests: int
    tokens_per_s: float
    ttft_p50: float
    ttft_p95: float
    latency_p50: float


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> Result:
    start = time.perf_counter()
    ttft = None
    chunks = 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"error event: {event['error']}")
            if any(choice.get("delta", {}).get("content") for choice in event.get("choices", ())):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - start
    end = time.perf_counter()
    return Result(ttft_s=ttft if ttft is not None else end - start, latency_s=end - start, chunks=chunks)


async def run_level(
    base_url: str,
    model: str,
    *,
    concurrency: int,
    requests: int,
    max_tokens: int,
    banned_tokens: list[int],
    system_prompt: str | None = None,
    tag: str | None = None,
) -> LevelStats:
    """`requests` requests, at most `concurrency` in flight; aggregate tokens/s over the level's wall time. With a
    `tag`, each prompt begins with it and its number, so that no prompt repeats one cached by an earlier level."""
    url = base_url.rstrip("/") + "/v1/chat/completions"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    results: list[Result] = []

    def body_for(i: int) -> dict:
        content = PROMPTS[i % len(PROMPTS)]
        if tag is not None:  # a prompt no earlier request sent: nothing of it is in the prefix cache
            content = f"[{tag}-{i}] {content}"
        messages = [{"role": "user", "content": content}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "logit_bias": {str(t): -100 for t in banned_tokens},
        }

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            results.append(await one_request(client, url, body_for(queue.get_nowait())))

    # A fresh connection per request: llama-server closes idle keep-alive connections, and a request sent on one it
    # is closing fails with "Server disconnected without sending a response" (seen in bench/compare.py's first run).
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ttfts = [r.ttft_s for r in results]
    return LevelStats(
        concurrency=concurrency,
        requests=len(results),
        # With end-of-sequence banned every request generates exactly max_tokens; without, count content chunks
        # (one per token on both servers, except where a chunk holds back a split UTF-8 character).
        tokens_per_s=(len(results) * max_tokens if banned_tokens else sum(r.chunks for r in results)) / wall,
        ttft_p50=statistics.median(ttfts),
        ttft_p95=percentile(ttfts, 0.95),
        latency_p50=statistics.median(r.latency_s for r in results),
    )
