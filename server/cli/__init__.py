"""The `slm-server` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from server.cli.commands import convert_command, list_command, pull_command
from server.cli.ray_command import add_ray_parser, ray_command
from server.config import ConfigError, HubSource, Settings, load_models_file
from server.http.access_guard import is_loopback_name

logger = logging.getLogger("server")
STARTUP_FAILURE = 3  # uvicorn's exit code when it cannot start


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
    serve.add_argument(
        "--admin-key",
        action="append",
        dest="admin_keys",
        default=[],
        help="bearer key for the admin API: /models, /models/load, /models/unload (repeatable; env SLM_ADMIN_KEYS)",
    )
    serve.add_argument(
        "--data-dir", type=Path, help="files and batches (default ~/.local/share/slm-server; env SLM_DATA_DIR)"
    )
    serve.add_argument("--preload", action="append", default=[], help="model to load at startup (repeatable)")
    serve.add_argument("--cors-origin", action="append", dest="cors_origins", default=[], help="allowed origin")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=None,
        help="serve beyond loopback without an API key (env SLM_INSECURE_NO_AUTH=1); refused otherwise",
    )
    pull = commands.add_parser("pull", help="download models from Hugging Face into the local cache, verified")
    pull.add_argument("names", nargs="+", metavar="NAME", help="model name or alias from the models file")
    pull.add_argument("--models", type=Path, dest="models_file", help="models file (default models.yaml)")
    convert = commands.add_parser("convert", help="convert a BERT-family safetensors model folder to GGUF")
    convert.add_argument("name", nargs="?", help="a configured `safetensors` model: convert it into the cache")
    convert.add_argument("--input", type=Path, help="a model folder (config.json, vocab.txt, model.safetensors)")
    convert.add_argument("--output", type=Path, help="the GGUF file to write (with --input)")
    convert.add_argument("--models", type=Path, dest="models_file", help="models file (default models.yaml)")
    listing = commands.add_parser("list", help="configured models: present on disk, size, loaded")
    listing.add_argument("--models", type=Path, dest="models_file", help="models file (default models.yaml)")
    listing.add_argument("--url", help="a running server to ask which models are loaded (default from SLM_HOST/PORT)")
    add_ray_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ray_args = ("config", "address", "non_blocking")
    overrides = {
        k: v
        for k, v in vars(args).items()
        if k not in ("command", "names", "url", "name", "input", "output", *ray_args)
    }
    try:
        settings = Settings.from_env(**overrides)
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if args.command == "serve":
            return _serve(settings)
        if args.command == "pull":
            return pull_command(settings, args.names)
        if args.command == "list":
            return list_command(settings, args.url)
        if args.command == "convert":
            return convert_command(settings, args.name, args.input, args.output)
        if args.command == "ray":
            return ray_command(args.config, args.address, args.non_blocking)
    except ConfigError as exc:
        logging.basicConfig()
        logger.error("%s", exc)
        return 2
    return 1


def _serve(settings: Settings) -> int:
    from server.app import budget_of, create_app
    from server.models.hub import file_status
    from server.models.loaders import worker_loader
    from server.models.registry import ModelRegistry

    _check_access(settings)
    # Serving never reaches the network: Hugging Face libraries stay offline, and nothing phones home.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    models = load_models_file(settings.models_file)
    not_pulled = []
    for spec in models.models:
        status = file_status(spec)
        if isinstance(spec.source, HubSource) and status.path is None:
            not_pulled.append(spec.name)  # a catalog entry nobody fetched yet: normal, not a fault
        elif not status.present:
            logger.error("model %s is not available: %s", spec.name, status.problem)
    if not_pulled:
        logger.info("not pulled yet (`slm-server pull NAME` fetches one): %s", ", ".join(not_pulled))
    # The app now knows it serves on settings.host: with no key on loopback, it keeps to local clients.
    settings = settings.model_copy(update={"loopback_guard": True})
    registry = ModelRegistry(models.models, worker_loader(settings), budget=budget_of(settings))
    app = create_app(settings, registry=registry)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        access_log=False,  # one structured line per request comes from our own middleware
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        # The loop and HTTP parser the server is tested with, whatever else is installed (ray[serve] brings
        # uvloop and httptools, which uvicorn would otherwise pick).
        loop="asyncio",
        http="h11",
    )
    server = _DrainingServer(config, app)
    logger.info("serving %d model(s) on http://%s:%d/v1", len(models.models), settings.host, settings.port)
    server.run()
    return 0


def _check_access(settings: Settings) -> None:
    """Refuse to serve beyond loopback without a key unless told to, loudly; a key file with no key is refused
    by `all_api_keys` itself."""
    if settings.all_api_keys() or is_loopback_name(settings.host):
        return
    if not settings.insecure_no_auth:
        raise ConfigError(
            f"refusing to listen on {settings.host} without an API key: anyone who can reach it could use the "
            "models. Set --api-key / SLM_API_KEYS or --api-key-file / SLM_API_KEY_FILE, bind 127.0.0.1, or pass "
            "--insecure-no-auth (SLM_INSECURE_NO_AUTH=1) to serve without a key anyway."
        )
    logger.warning(
        "!!! listening on %s WITHOUT an API key: anyone who can reach this address can use the models. "
        "Set --api-key, SLM_API_KEYS or --api-key-file. !!!",
        settings.host,
    )


# How long before the grace period ends the streams still running are told to end (a `shutting_down` error
# event), so that none is cut off silently when uvicorn cancels what is left.
STREAM_NOTICE_S = 1.0


class _DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT, first turn new requests away with 503, then let in-flight ones finish within the grace
    period (uvicorn's timeout_graceful_shutdown); streams still running just before it ends are ended with an
    error event. Then shut the workers down (the app's lifespan)."""

    def __init__(self, config: uvicorn.Config, app: Any) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._notice_scheduled = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is not None:
            await super().startup(sockets=sockets)
            return
        listener = self._listener()
        await super().startup(sockets=[listener])
        self._log_started_message([listener])  # uvicorn logs this itself only for sockets it binds

    def _listener(self) -> socket.socket:
        """The listening socket, bound as uvicorn binds it, with a fixed send buffer that its connections inherit:
        a small one (not autotuning up to 4 MiB) makes a client that stops reading block its stream's sends, and
        meet the send timeout, early."""
        host, port = self.config.host, self.config.port
        # IPPROTO_TCP by name: asyncio sets TCP_NODELAY only on connections of a socket that says it is TCP. With
        # proto 0, a response's separate writes met the client's delayed ACK: 44 ms a request on a kept-alive
        # connection (the official SDKs keep theirs alive), against 3 ms.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._app.state.settings.socket_send_buffer_bytes)
        try:
            listener.bind((host, port))
        except OSError as exc:
            logger.error("cannot listen on %s:%d: %s", host, port, exc)
            sys.exit(STARTUP_FAILURE)
        return listener

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # SIGHUP: re-read models.yaml; new entries appear, removed ones unload once idle.
        loop = self._loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._app.state.reload_models)
        try:
            with super().capture_signals():
                yield
        finally:
            loop.remove_signal_handler(signal.SIGHUP)

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._app.state.draining = True
        super().handle_exit(sig, frame)
        if self._loop is not None and not self._notice_scheduled:
            self._notice_scheduled = True
            # This runs as a signal handler, maybe in the middle of the loop's own code: hand over thread-safely.
            self._loop.call_soon_threadsafe(self._schedule_shutdown_notice)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            # uvicorn re-raises captured signals once it has shut down; a drained SIGTERM is a clean exit (0).
            self._captured_signals.remove(sig)

    def _schedule_shutdown_notice(self) -> None:
        grace = self.config.timeout_graceful_shutdown
        if grace is None or self._loop is None:
            return  # uvicorn waits for every request, however long: nothing is ever cut off
        delay = max(0.0, grace - min(STREAM_NOTICE_S, grace / 2))
        self._loop.call_later(delay, self._app.state.shutdown_notice.give)


if __name__ == "__main__":
    sys.exit(main())
