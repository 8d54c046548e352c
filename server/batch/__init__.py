"""Bulk jobs: OpenAI's Files and Batch API, durable in SQLite and a data directory, run in the capacity that
interactive requests leave (server/batch/runner.py)."""
