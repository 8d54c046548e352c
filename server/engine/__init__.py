"""Engines: the interface the service talks to, and the llama.cpp implementation behind it.

Only `server.engine.llama` imports `llama_cpp`, and only when a model is loaded.
"""

from server.engine.base import (
    Engine,
    EngineCounters,
    EngineInfo,
    GenerationDelta,
    GenerationRequest,
    SamplingParams,
)

__all__ = ["Engine", "EngineCounters", "EngineInfo", "GenerationDelta", "GenerationRequest", "SamplingParams"]
