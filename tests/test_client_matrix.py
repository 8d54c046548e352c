"""The README's client-library matrix cannot drift from what is tested: every client test module has a row, every
row a module, and each row names the version installed here (bump a library: regenerate the matrix with
`make client-matrix`)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.real.clients import LIBRARIES

ROOT = Path(__file__).parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("client_matrix", ROOT / "scripts" / "client_matrix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_rows() -> list[list[str]]:
    script = load_script()
    text = (ROOT / "README.md").read_text()
    block = text.split(script.BEGIN, 1)[1].split(script.END, 1)[0]
    lines = [line for line in block.strip().splitlines() if line.startswith("| ")][1:]  # without the header
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def test_every_client_test_module_has_a_row_and_every_row_a_module():
    modules = {f"real/clients/{path.name}" for path in (ROOT / "tests/real/clients").glob("test_*.py")}
    listed = {library.module for library in LIBRARIES}
    assert modules <= listed
    assert all((ROOT / "tests" / module).is_file() for module in listed)


def test_the_readme_matrix_lists_the_libraries_at_their_installed_versions():
    script = load_script()
    rows = readme_rows()
    assert [row[0] for row in rows] == [library.name for library in LIBRARIES]
    for row, library in zip(rows, LIBRARIES, strict=True):
        assert row[1] == f"`{library.distribution}` {script.version_of(library)}", library.name
        assert f"`tests/{library.module}`" in row[3] and re.search(r"\d+ of \d+ pass", row[3]), library.name


@pytest.mark.parametrize(
    ("cases", "expected"),
    [
        ('<testcase classname="tests.real.clients.test_x" name="a"/>', "1 of 1 pass"),
        (
            '<testcase classname="tests.real.clients.test_x" name="a"><failure message="boom"/></testcase>'
            '<testcase classname="tests.real.clients.test_x" name="b"/>',
            "1 of 2 pass, **1 fail**",
        ),
        (
            '<testcase classname="tests.real.clients.test_x" name="a">'
            '<skipped type="pytest.xfail" message="xfail: too small"/></testcase>',
            "0 of 1 pass, 1 known failure (too small)",
        ),
    ],
)
def test_outcomes_are_counted_per_module_from_junit(tmp_path, cases, expected):
    script = load_script()
    junit = tmp_path / "run.xml"
    junit.write_text(f"<testsuites><testsuite>{cases}</testsuite></testsuites>")
    assert script.status(script.outcomes(junit)["real/clients/test_x.py"]) == expected
