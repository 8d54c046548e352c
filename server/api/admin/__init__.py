"""The admin API, under llama.cpp router mode's names: every model's status (`GET /models`), load and unload
(`POST /models/load`, `POST /models/unload`), a server-sent event stream of model events (`GET /models/sse`), and
live serving figures (`GET /admin/stats`). Behind admin keys, not client keys (access.py)."""
