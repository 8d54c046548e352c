"""The `slm-server` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(
            host=args.host, port=args.port, models_file=args.models_file, log_level=args.log_level
        )
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if args.command == "serve":
            return _serve(settings)
    except ConfigError as exc:
        logging.basicConfig()
        logger.error("%s", exc)
        return 2
    return 1


def _serve(settings: Settings) -> int:
    import uvicorn

    from server.app import create_app
    from server.registry import ModelRegistry

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
    logger.info("serving %d model(s) on http://%s:%d/v1", len(models.models), settings.host, settings.port)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, log_config=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
