"""CPU feature checks that decide llama.cpp settings before a model is loaded.

llama.cpp's AMX path (an "extra buffer type" that repacks weights for Intel AMX tiles) segfaults in
`ggml_backend_amx_mul_mat` at the first decode on CPUs that report AMX, with default settings (measured on
this project's build machines). We therefore turn extra buffer types off on such CPUs. Elsewhere they stay
on: they also carry the AVX2/AVX-512 weight repacking that speeds up Q4_0-style quantizations.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

AMX_FLAGS = frozenset({"amx_tile", "amx_int8", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def has_amx(flags: frozenset[str]) -> bool:
    return bool(flags & AMX_FLAGS)


def resolve_use_extra_bufts(setting: Literal["auto"] | bool, flags: frozenset[str] | None = None) -> bool:
    """The `use_extra_bufts` model parameter to pass to llama.cpp for a models.yaml setting."""
    if setting != "auto":
        return bool(setting)
    flags = cpu_flags() if flags is None else flags
    if has_amx(flags):
        logger.info("CPU reports AMX: loading with use_extra_bufts=false (llama.cpp's AMX path crashes)")
        return False
    return True
