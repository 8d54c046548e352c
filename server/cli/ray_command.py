"""`slm-server ray`: run the Ray Serve application of a Serve config file, exactly as Ray's own `serve run CONFIG`
does (on a local Ray started for it, or on an existing cluster with --address). Ray is an optional extra
(`slm-server[ray]`): it is imported here, only when the command runs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("deploy/ray/serve.yaml")


def add_ray_parser(commands: argparse._SubParsersAction) -> None:
    ray = commands.add_parser(
        "ray", help="serve the models over a Ray cluster (Ray Serve; the same as `serve run CONFIG`)"
    )
    ray.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help=f"Serve config file (default {DEFAULT_CONFIG})"
    )
    ray.add_argument(
        "--address",
        help="an existing Ray cluster, as `ray start --head` prints it (env RAY_ADDRESS); default: start a local one",
    )
    ray.add_argument(
        "--non-blocking",
        action="store_true",
        help="deploy and return (the application keeps running on the cluster given by --address)",
    )


def ray_command(config: Path, address: str | None, non_blocking: bool) -> int:
    try:
        document = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        logger.error("cannot read the Serve config %s: %s", config, exc)
        return 2
    applications = document.get("applications") if isinstance(document, dict) else None
    if not isinstance(applications, list) or not applications:
        logger.error("%s is not a Serve config file: it needs an `applications:` list", config)
        return 2
    try:
        from ray.serve.scripts import cli
    except ImportError:
        logger.error("Ray Serve is not installed: pip install 'slm-server[ray]'")
        return 2
    arguments = ["run", str(config)]
    if address:
        arguments += ["--address", address]
    if non_blocking:
        arguments.append("--non-blocking")
    result = cli.main(args=arguments, prog_name="serve", standalone_mode=False)
    return result if isinstance(result, int) else 0
