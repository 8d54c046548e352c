from pathlib import Path

from server.engine.cpu import cpu_flags, resolve_use_extra_bufts

SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "amx_tile", "amx_int8", "amx_bf16"})
ZEN3 = frozenset({"avx2", "fma", "f16c"})


def test_auto_turns_extra_buffers_off_only_where_amx_is_reported():
    assert resolve_use_extra_bufts("auto", SAPPHIRE_RAPIDS) is False
    assert resolve_use_extra_bufts("auto", ZEN3) is True


def test_explicit_setting_wins():
    assert resolve_use_extra_bufts(True, SAPPHIRE_RAPIDS) is True
    assert resolve_use_extra_bufts(False, ZEN3) is False


def test_flags_are_read_from_cpuinfo(tmp_path: Path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_tile\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "avx2", "amx_tile"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
