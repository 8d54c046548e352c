"""llama-cpp-python's own server, with llama.cpp's extra buffer types set as slm-server sets them.

`Llama` does not expose `use_extra_bufts`, so the default model parameters are wrapped before the server starts;
on a CPU without AMX this changes nothing (the default is on, as in slm-server).
"""

from __future__ import annotations

import os
import runpy

import llama_cpp
import llama_cpp.llama

_default_params = llama_cpp.llama_model_default_params


def _params_with_our_extra_bufts() -> llama_cpp.llama_model_params:
    params = _default_params()
    params.use_extra_bufts = os.environ.get("SLM_BENCH_USE_EXTRA_BUFTS", "1") == "1"
    return params


llama_cpp.llama_model_default_params = _params_with_our_extra_bufts
llama_cpp.llama.llama_cpp.llama_model_default_params = _params_with_our_extra_bufts

if __name__ == "__main__":
    runpy.run_module("llama_cpp.server", run_name="__main__")
