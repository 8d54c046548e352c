"""slm-server: an OpenAI-compatible inference server for small language models."""

__version__ = "0.1.0"
