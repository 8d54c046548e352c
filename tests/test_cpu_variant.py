"""scripts/cpu_variant.py: which of the image's llama.cpp CPU variants a host's /proc/cpuinfo flags call for (as
ggml_backend_load_best scores them), and the Docker end-to-end check built on it (scripts/docker-e2e.sh)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("cpu_variant", ROOT / "scripts" / "cpu_variant.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cv = load_script()

BASE_X86 = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat clflush mmx fxsr sse sse2 ht syscall nx lm"
)
NEHALEM = f"{BASE_X86} pni ssse3 cx16 sse4_1 sse4_2 popcnt"
SANDY_BRIDGE = f"{NEHALEM} aes xsave avx pclmulqdq"
IVY_BRIDGE = f"{SANDY_BRIDGE} f16c rdrand"
HASWELL = f"{IVY_BRIDGE} fma movbe bmi1 avx2 bmi2 erms invpcid"
AVX512 = "avx512f avx512dq avx512cd avx512bw avx512vl"
# This project's build machine (lscpu: Intel Xeon, Sapphire Rapids), its flags as /proc/cpuinfo gives them.
SAPPHIRE_RAPIDS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall "
    "nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq ssse3 "
    "fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm "
    "abm 3dnowprefetch cpuid_fault ssbd ibrs ibpb stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms "
    "invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt "
    "xsavec xgetbv1 xsaves avx_vnni avx512_bf16 wbnoinvd arat avx512vbmi umip pku ospke avx512_vbmi2 gfni vaes "
    "vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid bus_lock_detect cldemote movdiri movdir64b fsrm "
    "md_clear serialize tsxldtrk ibt amx_bf16 avx512_fp16 amx_tile amx_int8 flush_l1d arch_capabilities"
)


@pytest.mark.parametrize(
    ("cpu", "flags", "variant"),
    [
        ("Core 2 (SSE4.1 only)", f"{BASE_X86} pni ssse3 sse4_1", "x64"),
        ("Nehalem", NEHALEM, "sse42"),
        ("Sandy Bridge", SANDY_BRIDGE, "sandybridge"),
        ("Ivy Bridge", IVY_BRIDGE, "ivybridge"),
        ("Piledriver (FMA, no AVX2)", f"{IVY_BRIDGE} fma fma4 bmi1", "piledriver"),
        ("Haswell", HASWELL, "haswell"),
        ("Zen 3 (AVX2, no AVX-512)", f"{HASWELL} sha_ni clzero", "haswell"),
        ("Knights Landing (AVX-512F without VL/BW/DQ)", f"{HASWELL} avx512f avx512cd avx512er avx512pf", "haswell"),
        ("Alder Lake (AVX-VNNI, no AVX-512)", f"{HASWELL} avx_vnni sha_ni", "alderlake"),
        ("Skylake-SP", f"{HASWELL} {AVX512}", "skylakex"),
        ("Cannon Lake", f"{HASWELL} {AVX512} avx512ifma avx512vbmi", "cannonlake"),
        ("Cascade Lake", f"{HASWELL} {AVX512} avx512_vnni", "cascadelake"),
        ("Ice Lake", f"{HASWELL} {AVX512} avx512vbmi avx512_vbmi2 avx512_vnni", "icelake"),
        ("Cooper Lake", f"{HASWELL} {AVX512} avx512_vnni avx512_bf16", "cooperlake"),
        ("Zen 4", f"{HASWELL} {AVX512} avx512vbmi avx512_vnni avx512_bf16 avx512ifma", "zen4"),
        ("Sapphire Rapids (AMX)", SAPPHIRE_RAPIDS, "sapphirerapids"),
    ],
)
def test_the_best_variant_for_known_cpus(cpu, flags, variant):
    assert cv.best_variant(frozenset(flags.split())) == variant, cpu


def test_every_variant_scores_differently_so_there_is_never_a_tie():
    everything = frozenset(flag for flags in cv.CPUINFO_FLAGS.values() for flag in flags)
    scores = [cv.score(variant, everything) for variant in cv.VARIANTS]
    assert all(scores) and len(set(scores)) == len(scores)


RELEVANT = sorted({flag for flags in cv.CPUINFO_FLAGS.values() for flag in flags} | {"amx_tile", "sse4_1"})


@given(st.frozensets(st.sampled_from(RELEVANT)))
def test_the_best_variant_runs_on_the_cpu_and_none_that_runs_scores_higher(flags):
    best = cv.best_variant(flags)
    assert cv.score(best, flags) >= 1  # x64 always runs
    assert all(cv.has_feature(feature, flags) for feature in cv.VARIANTS[best] if feature in cv.SCORE)
    assert all(cv.score(variant, flags) <= cv.score(best, flags) for variant in cv.VARIANTS)
    avx512_host = all(cv.has_feature(feature, flags) for feature in cv.VARIANTS["skylakex"])
    assert ("AVX512" in cv.VARIANTS[best]) is avx512_host  # an AVX-512 host gets an AVX-512 variant, no other does


def test_cpu_flags_are_read_from_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_tile\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cv.cpu_flags(info) == {"fpu", "avx2", "amx_tile"}
    info.write_text("processor\t: 0\nFeatures\t: fp asimd\n")  # an ARM host: no x86 variant applies
    with pytest.raises(cv.CheckFailed, match="not an x86 host"):
        cv.cpu_flags(info)


SHIPPED = "".join(f"libggml-cpu-{variant}.so\n" for variant in cv.VARIANTS) + "libggml-base.so\n"
AVX2_HOST = frozenset(HASWELL.split())
AMX_HOST = frozenset(SAPPHIRE_RAPIDS.split())


def maps_of(*variants: str) -> str:
    lines = ["7f1c2a000000-7f1c2a100000 r-xp 00000000 00:31 4242 /usr/lib/x86_64-linux-gnu/libc.so.6"]
    lines += [f"7f1c3{i}000000-7f1c3{i}100000 r-xp 00000000 00:31 99 /opt/venv/lib/ggml-backends/libggml-cpu-{v}.so"
              for i, v in enumerate(variants)]  # fmt: skip
    return "\n".join(lines) + "\n"


def log_of(features: str, *extra_bufts: bool) -> str:
    lines = [f"slm-e2e_slm-server_1  | 2026-12-03 INFO llama.cpp CPU features: CPU : {features} | OPENMP = 1 |"]
    lines += ["slm-e2e_slm-server_1  | INFO CPU reports AMX: loading with use_extra_bufts=false (it crashes)"]
    lines += [
        f"slm-e2e_slm-server_1  | INFO loaded model m (threads=2, extra_bufts={on}, kv cache K f16)"
        for on in extra_bufts
    ]
    return "\n".join(lines) + "\n"  # fmt: skip


HASWELL_FEATURES = "SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1"
SPR_FEATURES = (
    "SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
    "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1"
)


def test_the_check_passes_when_the_server_runs_the_best_variant():
    verdict = cv.check(maps_of("haswell", "haswell"), SHIPPED, log_of(HASWELL_FEATURES, True), AVX2_HOST)
    assert verdict == "llama.cpp runs libggml-cpu-haswell.so, the best of 14 variants for this host's flags"


def test_on_an_amx_host_the_check_wants_sapphirerapids_with_amx_extra_buffers_off():
    verdict = cv.check(maps_of("sapphirerapids"), SHIPPED, log_of(SPR_FEATURES, False, False), AMX_HOST)
    assert "libggml-cpu-sapphirerapids.so" in verdict and "AMX extra buffers off in all 2 model loads" in verdict
    with pytest.raises(cv.CheckFailed, match="extra_bufts"):
        cv.check(maps_of("sapphirerapids"), SHIPPED, log_of(SPR_FEATURES, False, True), AMX_HOST)
    with pytest.raises(cv.CheckFailed, match="extra_bufts"):
        cv.check(maps_of("sapphirerapids"), SHIPPED, log_of(SPR_FEATURES), AMX_HOST)  # no model load logged


@pytest.mark.parametrize(
    ("maps", "shipped", "log", "message"),
    [
        (maps_of("skylakex"), SHIPPED, log_of(SPR_FEATURES, False), "loaded CPU variant.s. skylakex, not sapphire"),
        (maps_of("sapphirerapids", "haswell"), SHIPPED, log_of(SPR_FEATURES, False), "haswell, sapphirerapids, not"),
        (maps_of(), SHIPPED, log_of(SPR_FEATURES, False), "loaded CPU variant.s. none"),
        (maps_of("sapphirerapids"), SHIPPED.replace("libggml-cpu-zen4.so\n", ""), log_of(SPR_FEATURES), "update"),
        (maps_of("sapphirerapids"), SHIPPED + "libggml-cpu-zen5.so\n", log_of(SPR_FEATURES), "update"),
        (maps_of("sapphirerapids"), SHIPPED, log_of(HASWELL_FEATURES, False), "logged llama.cpp CPU features"),
        (maps_of("sapphirerapids"), SHIPPED, "", "logged llama.cpp CPU features"),
    ],
)
def test_the_check_fails_on_any_other_variant_or_an_image_it_does_not_know(maps, shipped, log, message):
    with pytest.raises(cv.CheckFailed, match=message):
        cv.check(maps, shipped, log, AMX_HOST)


def test_the_command_line(tmp_path, capsys):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {HASWELL}\n")
    assert cv.main(["best", "--cpuinfo", str(cpuinfo)]) == 0
    assert capsys.readouterr().out == "haswell\n"
    files = {"maps": maps_of("sandybridge"), "backends": SHIPPED, "log": log_of(HASWELL_FEATURES, True)}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    args = ["check", "--cpuinfo", str(cpuinfo), *(f"--{name}={tmp_path / name}" for name in files)]
    assert cv.main(args) == 1
    assert capsys.readouterr().err.startswith("FAIL: llama.cpp loaded CPU variant(s) sandybridge, not haswell")
    (tmp_path / "maps").write_text(maps_of("haswell"))
    assert cv.main(args) == 0
    assert "libggml-cpu-haswell.so" in capsys.readouterr().out


def test_it_mirrors_the_llama_cpp_the_image_builds():
    dockerfile = (ROOT / "Dockerfile").read_text()
    (version,) = re.findall(r"^ARG LLAMA_CPP_PYTHON_VERSION=(\S+)$", dockerfile, flags=re.MULTILINE)
    assert version == cv.LLAMA_CPP_PYTHON_VERSION  # a llama.cpp upgrade revisits the variants and their scores
    assert "-DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON" in dockerfile
    e2e = (ROOT / "scripts" / "docker-e2e.sh").read_text()
    assert "scripts/cpu_variant.py check" in e2e and "AVX2 = 1" not in e2e
