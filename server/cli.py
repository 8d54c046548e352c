"""The `slm-server` command."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn

from server.config import ConfigError, Settings, load_models_file

logger = logging.getLogger("server")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm-server", description="OpenAI-compatible server for small models.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the models of a models file over HTTP")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; env SLM_HOST)")
    serve.add_argument("--port", type=int, help="port to bind (default 8000; env SLM_PORT)")
    serve.add_argument("--models", type=Path, dest="models_file", help="models file (default models.yaml)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--api-key", action="append", dest="api_keys", default=[], help="required bearer key (repeatable)"
    )
    serve.add_argument("--api-key-file", type=Path, help="file with one API key per line")
    serve.add_argument("--preload", action="append", default=[], help="model to load at startup (repeatable)")
    serve.add_argument("--cors-origin", action="append", dest="cors_origins", default=[], help="allowed origin")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = Settings.from_env(**overrides)
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if args.command == "serve":
            return _serve(settings)
    except ConfigError as exc:
        logging.basicConfig()
        logger.error("%s", exc)
        return 2
    return 1


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(settings: Settings) -> int:
    from server.app import create_app
    from server.registry import ModelRegistry

    # Serving never reaches the network: Hugging Face libraries stay offline, and nothing phones home.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    models = load_models_file(settings.models_file)
    for spec in models.models:
        try:
            path = spec.model_path()
        except ConfigError as exc:
            logger.error("model %s is not available: %s", spec.name, exc)
            continue
        if not path.is_file():
            logger.error("model %s is not available: %s does not exist", spec.name, path)
    app = create_app(settings, registry=ModelRegistry(models.models))
    if not app.state.api_key_check.enabled and not _is_loopback(settings.host):
        logger.warning(
            "!!! listening on %s WITHOUT an API key: anyone who can reach this address can use the models. "
            "Set --api-key, SLM_API_KEYS or --api-key-file. !!!",
            settings.host,
        )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,  # one structured line per request comes from our own middleware
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    server = _DrainingServer(config, app)
    logger.info("serving %d model(s) on http://%s:%d/v1", len(models.models), settings.host, settings.port)
    server.run()
    return 0


class _DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, first turn new requests away with 503, then let in-flight ones finish within the grace
    period (uvicorn's timeout_graceful_shutdown), then shut the workers down (the app's lifespan)."""

    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._app.state.draining = True
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            # uvicorn re-raises captured signals once it has shut down; a drained SIGTERM is a clean exit (0).
            self._captured_signals.remove(sig)


if __name__ == "__main__":
    sys.exit(main())
