#!/usr/bin/env python3
"""Which of llama.cpp's x86 CPU backend variants a host should run, and whether the image's llama.cpp ran it.

The image builds llama.cpp with GGML_BACKEND_DL and GGML_CPU_ALL_VARIANTS (Dockerfile): one
libggml-cpu-<variant>.so per x86-64 feature level, of which llama.cpp loads, at run time, the one with the highest
score among those the CPU supports (ggml_backend_load_best). VARIANTS and SCORE mirror llama-cpp-python 0.3.36's
llama.cpp (ggml/src/CMakeLists.txt and ggml/src/ggml-cpu/arch/x86/cpu-feats.cpp); the check refuses an image
whose set of variants differs, so a llama.cpp upgrade that changes them is noticed here rather than misjudged.

AMX: the sapphirerapids variant (AMX-INT8) stays the best one on AMX hosts. What the server excludes there is
llama.cpp's AMX extra buffer type (use_extra_bufts resolves to false, server/engine/cpu.py), whose
ggml_backend_amx_mul_mat crashes; the check also verifies that every model loaded with extra_bufts=False there.

Standard library only: scripts/docker-e2e.sh runs it on the host (the container shares its /proc/cpuinfo).

  scripts/cpu_variant.py best [--cpuinfo FILE]
  scripts/cpu_variant.py check --maps FILE --backends FILE --log FILE [--cpuinfo FILE]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# The llama-cpp-python release whose llama.cpp this mirrors: the Dockerfile's LLAMA_CPP_PYTHON_VERSION (tested).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"

# The feature levels of GGML_CPU_ALL_VARIANTS on x86 (not MSVC), in CMakeLists.txt's order, with their features.
VARIANTS: dict[str, tuple[str, ...]] = {
    "x64": (),
    "sse42": ("SSE42",),
    "sandybridge": ("SSE42", "AVX"),
    "ivybridge": ("SSE42", "AVX", "F16C"),
    "piledriver": ("SSE42", "AVX", "F16C", "FMA"),
    "haswell": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2"),
    "skylakex": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512"),
    "cannonlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI"),
    "cascadelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI"),
    "icelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI"),
    "cooperlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI", "AVX512_BF16"),
    "zen4": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"),
    "alderlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX_VNNI"),
    "sapphirerapids": (
        "SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16",
        "AMX_TILE", "AMX_INT8",
    ),
}  # fmt: skip

# ggml_backend_cpu_x86_score: a variant scores 0 (unusable) unless the CPU has each of these features it was built
# with, else 1 plus these weights. AMX_TILE is compiled in but not checked, so it is not here.
SCORE: dict[str, int] = {
    "FMA": 1,
    "F16C": 1 << 1,
    "SSE42": 1 << 2,
    "BMI2": 1 << 3,
    "AVX": 1 << 4,
    "AVX2": 1 << 5,
    "AVX_VNNI": 1 << 6,
    "AVX512": 1 << 7,
    "AVX512_VBMI": 1 << 8,
    "AVX512_BF16": 1 << 9,
    "AVX512_VNNI": 1 << 10,
    "AMX_INT8": 1 << 11,
}

# The /proc/cpuinfo flags (Linux's names) behind each CPUID bit that score tests.
CPUINFO_FLAGS: dict[str, tuple[str, ...]] = {
    "FMA": ("fma",),
    "F16C": ("f16c",),
    "SSE42": ("sse4_2",),
    "BMI2": ("bmi2",),
    "AVX": ("avx",),
    "AVX2": ("avx2",),
    "AVX_VNNI": ("avx_vnni",),
    "AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "AVX512_VBMI": ("avx512vbmi",),
    "AVX512_BF16": ("avx512_bf16",),
    "AVX512_VNNI": ("avx512_vnni",),
    "AMX_INT8": ("amx_int8",),
}

# The features llama_print_system_info leaves out (ggml_backend_cpu_get_features reports the others).
UNREPORTED = frozenset({"SSE42"})

AMX_FLAGS = frozenset({"amx_tile", "amx_int8", "amx_bf16"})  # as server/engine/cpu.py decides use_extra_bufts


class CheckFailed(Exception):
    """The image's llama.cpp did not run the CPU variant this host should get."""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    raise CheckFailed(f"no x86 `flags` line in {cpuinfo}: not an x86 host")


def has_feature(feature: str, flags: frozenset[str]) -> bool:
    return all(flag in flags for flag in CPUINFO_FLAGS[feature])


def score(variant: str, flags: frozenset[str]) -> int:
    scored = [feature for feature in VARIANTS[variant] if feature in SCORE]
    if not all(has_feature(feature, flags) for feature in scored):
        return 0
    return 1 + sum(SCORE[feature] for feature in scored)


def best_variant(flags: frozenset[str]) -> str:
    """The variant ggml_backend_load_best loads on a CPU with these flags (scores are distinct powers-of-two sums)."""
    return max(VARIANTS, key=lambda variant: score(variant, flags))


def loaded_variants(maps: str) -> set[str]:
    """The CPU variants mapped into processes, from the text of their /proc/PID/maps."""
    return set(re.findall(r"/libggml-cpu-([A-Za-z0-9_.]+?)\.so(?:\.[0-9.]+)?$", maps, flags=re.MULTILINE))


def shipped_variants(listing: str) -> set[str]:
    """The CPU variants in the image, from a listing of its GGML_BACKEND_DIR."""
    return set(re.findall(r"^libggml-cpu-([A-Za-z0-9_.]+?)\.so$", listing, flags=re.MULTILINE))


def check(maps: str, listing: str, log: str, flags: frozenset[str]) -> str:
    """A one-line verdict that the running server's llama.cpp uses the best variant for this host; else CheckFailed."""
    shipped = shipped_variants(listing)
    if shipped != set(VARIANTS):
        raise CheckFailed(
            f"the image's CPU variants {sorted(shipped)} are not the {len(VARIANTS)} this check knows "
            f"{sorted(VARIANTS)}: update scripts/cpu_variant.py from the llama.cpp the image builds"
        )
    expected = best_variant(flags)
    loaded = loaded_variants(maps)
    if loaded != {expected}:
        found = ", ".join(sorted(loaded)) or "none"
        raise CheckFailed(f"llama.cpp loaded CPU variant(s) {found}, not {expected}, the best for this host's flags")
    reported = re.findall(r"llama\.cpp CPU features: (.*)", log)
    wanted = [feature for feature in VARIANTS[expected] if feature in SCORE and feature not in UNREPORTED]
    if not reported or any(f"{feature} = 1" not in line for line in reported for feature in wanted):
        raise CheckFailed(f"the logged llama.cpp CPU features do not show {expected}'s {wanted}: {reported[:1]}")
    verdict = f"llama.cpp runs libggml-cpu-{expected}.so, the best of {len(VARIANTS)} variants for this host's flags"
    if not flags & AMX_FLAGS:
        return verdict
    extra_bufts = re.findall(r"\bextra_bufts=(\w+)", log)
    if not extra_bufts or set(extra_bufts) != {"False"}:
        raise CheckFailed(f"an AMX host, yet models loaded with extra_bufts {extra_bufts}, not all False")
    return f"{verdict} (AMX host: AMX extra buffers off in all {len(extra_bufts)} model loads, use_extra_bufts auto)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("command", choices=("best", "check"))
    parser.add_argument("--cpuinfo", type=Path, default=Path("/proc/cpuinfo"))
    parser.add_argument("--maps", type=Path, help="the /proc/PID/maps of the container's processes")
    parser.add_argument("--backends", type=Path, help="a listing of the image's GGML_BACKEND_DIR")
    parser.add_argument("--log", type=Path, help="the server's log")
    args = parser.parse_args(argv)
    try:
        flags = cpu_flags(args.cpuinfo)
        if args.command == "best":
            sys.stdout.write(best_variant(flags) + "\n")
            return 0
        if not (args.maps and args.backends and args.log):
            parser.error("check needs --maps, --backends and --log")
        sys.stdout.write(check(args.maps.read_text(), args.backends.read_text(), args.log.read_text(), flags) + "\n")
        return 0
    except CheckFailed as exc:
        sys.stderr.write(f"FAIL: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
