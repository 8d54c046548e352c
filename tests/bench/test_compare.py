"""bench/compare.py's arguments, the peer command lines it builds (bench/peers.py), its median/ratio tables
(bench/compare_report.py) and scripts/build-llama-server.sh's cache and checks: nothing is built or served here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.compare import parse_args, peer_command, turn_order
from bench.compare_report import GOALS, PREFIX, goals_table, median_stats, report
from bench.load import LevelStats
from bench.peers import BUILD_SCRIPT, MODEL, N_CTX, PARALLEL, llama_server_binary, llama_server_command
from server.engine.cpu import resolve_use_extra_bufts

MODEL_PATH = Path("/models/smollm2.gguf")
BINARY = Path("/opt/llama-server")


def flag_value(command: list[str], flag: str) -> str:
    assert command.count(flag) == 1, f"{flag} should appear once in {command}"
    return command[command.index(flag) + 1]


def stats(tokens_per_s: float, ttft_p95: float, concurrency: int = 8) -> LevelStats:
    return LevelStats(concurrency, 16, tokens_per_s, ttft_p95 / 2, ttft_p95, 1.0)


def test_defaults_keep_llama_cpp_python_as_the_peer_with_three_rounds() -> None:
    args = parse_args([])
    assert args.peer == "llama-cpp-python"
    assert args.rounds == 3
    assert args.llama_server is None
    assert {1, 8} <= set(args.levels)  # the goals' levels are measured by default


def test_llama_server_peer_and_rounds_parse() -> None:
    args = parse_args(["--peer", "llama-server", "--threads", "2", "--rounds", "5", "--llama-server", str(BINARY)])
    assert (args.peer, args.threads, args.rounds, args.llama_server) == ("llama-server", [2], 5, BINARY)


@pytest.mark.parametrize(
    "argv",
    [
        ["--peer", "vllm"],
        ["--rounds", "0"],
        ["--rounds", "-1"],
        ["--rounds", "three"],
        ["--threads", "0"],
        ["--levels", "8", "0"],
        ["--max-tokens", "0"],
        ["--llama-server", "/opt/llama-server"],  # a binary for a peer that is not llama-server
    ],
)
def test_bad_arguments_exit_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_llama_server_command_mirrors_our_layout_on_loopback() -> None:
    command = llama_server_command(BINARY, 2, 8123, MODEL_PATH, extra_bufts=True)
    assert command[0] == str(BINARY)
    assert flag_value(command, "--host") == "127.0.0.1"
    assert flag_value(command, "--port") == "8123"
    assert flag_value(command, "--model") == str(MODEL_PATH)
    assert flag_value(command, "--alias") == MODEL
    assert flag_value(command, "--threads") == "2"
    assert flag_value(command, "--threads-batch") == "2"
    assert flag_value(command, "--parallel") == str(PARALLEL)
    assert flag_value(command, "--ctx-size") == str(N_CTX * PARALLEL)
    assert flag_value(command, "--flash-attn") == "on"
    assert {"--no-kv-unified", "--no-webui"} <= set(command)
    assert "--kv-unified" not in command
    assert "0.0.0.0" not in command


@pytest.mark.parametrize(
    ("flags", "expected", "absent"),
    [
        (frozenset({"avx2", "avx512f", "amx_tile", "amx_int8", "amx_bf16"}), "--no-repack", "--repack"),
        (frozenset({"avx2", "avx512f"}), "--repack", "--no-repack"),
    ],
)
def test_llama_server_extra_buffers_follow_our_resolution(flags: frozenset[str], expected: str, absent: str) -> None:
    args = parse_args(["--peer", "llama-server", "--llama-server", str(BINARY)])
    command = peer_command(args, 2, 8123, MODEL_PATH, resolve_use_extra_bufts("auto", flags))
    assert expected in command
    assert absent not in command


def test_default_peer_command_is_llama_cpp_python_on_loopback() -> None:
    command = peer_command(parse_args([]), 2, 8123, MODEL_PATH, extra_bufts=False)
    assert command[1:3] == ["-m", "bench.baseline_server"]
    assert flag_value(command, "--host") == "127.0.0.1"
    assert flag_value(command, "--n_threads") == "2"


def test_turns_alternate_which_server_goes_first() -> None:
    assert [turn_order(i) for i in range(4)] == [("ours", "peer"), ("peer", "ours")] * 2


def test_median_is_taken_figure_by_figure() -> None:
    runs = [
        LevelStats(8, 16, 100.0, 0.5, 3.0, 2.0),
        LevelStats(8, 16, 300.0, 0.1, 1.0, 9.0),
        LevelStats(8, 16, 200.0, 0.9, 2.0, 1.0),
    ]
    assert median_stats(runs) == LevelStats(8, 16, 200.0, 0.5, 2.0, 2.0)
    with pytest.raises(ValueError):
        median_stats([])


def test_goals_are_ratios_of_medians_with_the_per_round_spread() -> None:
    ours = {"1": [stats(40, 0.1, 1), stats(60, 0.1, 1), stats(50, 0.1, 1)], "8": [stats(200, 0.4)] * 3}
    ours[PREFIX] = [stats(180, 0.5)] * 3
    theirs = {"1": [stats(20, 0.1, 1), stats(25, 0.1, 1), stats(30, 0.1, 1)], "8": [stats(100, 0.8)] * 3}
    theirs[PREFIX] = [stats(90, 2.0)] * 3
    rows = goals_table(ours, theirs)[2:]
    assert len(rows) == len(GOALS)
    single, eight, ttft8, prefix = rows
    assert "| 50.0 | 25.0 | 2.00x | higher | 1.67x-2.40x |" in single
    assert "| 200.0 | 100.0 | 2.00x | higher |" in eight
    assert "| 0.400 s | 0.800 s | 0.50x | lower |" in ttft8
    assert "| 0.500 s | 2.000 s | 0.25x | lower |" in prefix
    text = report(2, "llama-server", 3, ours, theirs)
    assert text.startswith("threads=2, peer=llama-server, median of 3 round(s)")


def test_a_goal_whose_level_was_not_run_says_so() -> None:
    ours = {"4": [stats(100, 0.3, 4)], PREFIX: [stats(100, 0.3)]}
    theirs = {"4": [stats(50, 0.6, 4)], PREFIX: [stats(50, 0.6)]}
    rows = goals_table(ours, theirs)[2:]
    assert "not measured (add level 1)" in rows[0]
    assert "0.50x" in rows[3]


def cached_build(tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    cache.mkdir()
    binary = cache / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    (cache / ".built").touch()
    return cache


def test_build_script_prints_the_cached_binary_without_building(tmp_path: Path) -> None:
    cache = cached_build(tmp_path)
    env = {**os.environ, "LLAMA_SERVER_DIR": str(cache)}
    done = subprocess.run(["/bin/bash", str(BUILD_SCRIPT)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # nothing configured, downloaded or built
    assert done.stdout.strip() == str(cache / "llama-server")


def test_compare_finds_the_cached_binary_through_the_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = cached_build(tmp_path)
    monkeypatch.setenv("LLAMA_SERVER_DIR", str(cache))
    assert llama_server_binary() == cache / "llama-server"
    assert llama_server_binary(cache / "llama-server") == cache / "llama-server"
    with pytest.raises(FileNotFoundError):
        llama_server_binary(tmp_path / "missing")


def test_build_script_names_missing_tools(tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("dirname", "grep", "md5sum", "cut", "mkdir"):  # what it runs before its checks; no cmake, no g++
        (tools / tool).symlink_to(shutil.which(tool))
    env = {"HOME": str(tmp_path), "PATH": str(tools), "LLAMA_SERVER_DIR": str(tmp_path / "cache")}
    done = subprocess.run(["/bin/bash", str(BUILD_SCRIPT)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "missing cmake g++" in done.stderr
    assert "apt-get install" in done.stderr


def test_build_script_cached_only_builds_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "LLAMA_SERVER_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        ["/bin/bash", str(BUILD_SCRIPT), "--cached"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 3
    assert done.stdout == ""
    assert not (tmp_path / "cache").exists()


def test_the_built_llama_server_knows_every_flag_we_pass() -> None:
    """Against this machine's cached build when there is one (scripts/build-llama-server.sh); `--help` only."""
    done = subprocess.run([str(BUILD_SCRIPT), "--cached"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip("llama-server is not built here (scripts/build-llama-server.sh)")
    binary = Path(done.stdout.strip())
    usage = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    known = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", usage))
    for extra_bufts in (True, False):
        flags = [a for a in llama_server_command(binary, 2, 8123, MODEL_PATH, extra_bufts)[1:] if a.startswith("-")]
        assert set(flags) <= known, set(flags) - known
