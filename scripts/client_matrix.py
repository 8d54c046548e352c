"""The README's client-library compatibility matrix, made from a run of the libraries' tests.

    .venv/bin/python scripts/client_matrix.py                    # run tests/real/clients etc., rewrite the README
    .venv/bin/python scripts/client_matrix.py --results run.xml  # from an earlier `pytest --junitxml=run.xml`

Rows come from tests/real/clients/__init__.py (LIBRARIES); versions are the installed ones; the status column
counts each module's passed, failed and expected-to-fail tests (with the reasons of the latter). The README's
matrix sits between the two marker comments below and is replaced whole.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.real.clients import LIBRARIES, Library  # noqa: E402

BEGIN, END = "<!-- client-matrix:begin -->", "<!-- client-matrix:end -->"
README = ROOT / "README.md"
logger = logging.getLogger("client_matrix")


def version_of(library: Library) -> str:
    if library.environment is None:
        return metadata.version(library.distribution)
    python = ROOT / library.environment / "bin" / "python"
    code = f"import importlib.metadata as m; print(m.version({library.distribution!r}))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def outcomes(junit: Path) -> dict[str, Counter]:
    """Per test module (its path under tests/): how many tests passed, failed, were skipped or failed as expected,
    and the expected failures' reasons."""
    found: dict[str, Counter] = defaultdict(Counter)
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/").removeprefix("tests/") + ".py"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                reason = child.get("message", "")
                outcome = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
                if outcome == "xfailed":
                    found[module][f"reason:{reason.removeprefix('xfail: ').strip()}"] += 1
        found[module][outcome] += 1
    return found


def status(counts: Counter) -> str:
    total = sum(counts[k] for k in ("passed", "failed", "skipped", "xfailed"))
    if total == 0:
        return "not run"
    parts = [f"{counts['passed']} of {total} pass"]
    if counts["failed"]:
        parts.append(f"**{counts['failed']} fail**")
    if counts["skipped"]:
        parts.append(f"{counts['skipped']} skipped")
    reasons = sorted(key.removeprefix("reason:") for key in counts if key.startswith("reason:"))
    if counts["xfailed"]:
        parts.append(f"{counts['xfailed']} known failure ({'; '.join(reasons)})")
    return ", ".join(parts)


def matrix(results: dict[str, Counter]) -> str:
    lines = ["| library | version | what is tested | status |", "|---|---|---|---|"]
    for library in LIBRARIES:
        counts = results.get(library.module, Counter())
        lines.append(
            f"| {library.name} | `{library.distribution}` {version_of(library)} | {library.covers} "
            f"| {status(counts)} (`tests/{library.module}`) |"
        )
    return "\n".join(lines)


def rewrite(readme: str, table: str) -> str:
    head, begin, rest = readme.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, help="a pytest --junitxml file to read instead of running the tests")
    args = parser.parse_args()
    junit = args.results
    if junit is None:
        junit = Path(tempfile.mkdtemp()) / "clients.xml"
        modules = [f"tests/{library.module}" for library in LIBRARIES]
        logger.info("running %s", " ".join(modules))
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *modules],
            cwd=ROOT,
            check=False,
        )
    README.write_text(rewrite(README.read_text(), matrix(outcomes(junit))))
    logger.info("README.md's compatibility matrix rewritten from %s", junit)


if __name__ == "__main__":
    main()
