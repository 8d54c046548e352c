"""The requirements of this project and of the optional extras named, one a line, read from pyproject.toml: what
the Dockerfile installs (`--build-arg EXTRAS=ray` adds the Ray Serve application's), so the image and the project
never disagree.

    python3 scripts/requirements_of.py pyproject.toml [EXTRA ...]   (extras also comma-separated)

An unknown extra is an error (exit 2), so a misspelt build argument fails the build instead of a missing module
failing the container later. Only the standard library: it runs before anything is installed.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

IMAGE_EXTRAS = ("ray",)  # the extras an image may carry (dev and the embedded model are installed otherwise)


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    out = list(project["dependencies"])
    for extra in extras:
        if extra not in IMAGE_EXTRAS:
            raise ValueError(f"unknown extra {extra!r}: an image takes {', '.join(IMAGE_EXTRAS)}")
        out += project["optional-dependencies"][extra]
    return out


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write(__doc__ or "")
        return 2
    extras = [name for arg in argv[1:] for name in arg.replace(",", " ").split()]
    try:
        lines = requirements(Path(argv[0]), extras)
    except ValueError as exc:
        sys.stderr.write(f"requirements_of: {exc}\n")
        return 2
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
