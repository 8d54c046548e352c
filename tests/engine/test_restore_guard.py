"""Markers of prompt cache restores in progress (server/engine/restore_guard.py): a marker left by a process that no
longer runs names the file that ended it; a running process's marker, or a malformed one, names nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from server.engine.restore_guard import MARKER_PREFIX, RestoreUnguarded, restoring, unfinished_restores

KEY = "a" * 32  # hexadecimal, as cache_key makes them
NAME = f"{KEY}-0123456789abcdef.kv"


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def marker(tmp_path, pid: int, name: str = NAME, key: str = KEY):
    path = tmp_path / f"{MARKER_PREFIX}{key}-{pid}"
    path.write_text(name)
    return path


def test_the_marker_exists_only_while_the_restore_runs(tmp_path):
    with restoring(tmp_path, KEY, NAME):
        [path] = tmp_path.iterdir()
        assert path.name == f"{MARKER_PREFIX}{KEY}-{os.getpid()}" and path.read_text() == NAME
    assert list(tmp_path.iterdir()) == []


def test_the_marker_goes_when_the_restore_raises(tmp_path):
    with pytest.raises(RuntimeError), restoring(tmp_path, KEY, NAME):
        raise RuntimeError("llama.cpp refused")
    assert list(tmp_path.iterdir()) == []


def test_a_marker_of_a_process_that_ended_names_its_file_once(tmp_path):
    left = marker(tmp_path, dead_pid())
    assert unfinished_restores(tmp_path, KEY) == [NAME]
    assert not left.exists() and unfinished_restores(tmp_path, KEY) == []


def test_a_marker_of_this_processs_pid_is_from_an_earlier_process(tmp_path):
    marker(tmp_path, os.getpid())  # nothing of this process is restoring while it asks
    assert unfinished_restores(tmp_path, KEY) == [NAME]


def test_a_running_processs_marker_and_other_keys_markers_are_left_alone(tmp_path):
    running = marker(tmp_path, os.getppid())
    other = marker(tmp_path, dead_pid(), name=f"{'b' * 32}-0123456789abcdef.kv", key="b" * 32)
    assert unfinished_restores(tmp_path, KEY) == []
    assert running.exists() and other.exists()


@pytest.mark.parametrize("name", ["../elsewhere.kv", f"{'b' * 32}-0123456789abcdef.kv", f"{KEY}-x/../../a.kv", ""])
def test_a_marker_naming_no_file_of_its_key_in_the_directory_names_nothing(tmp_path, name):
    marker(tmp_path, dead_pid(), name=name)
    assert unfinished_restores(tmp_path, KEY) == []


def test_no_directory_no_markers(tmp_path):
    assert unfinished_restores(tmp_path / "missing", KEY) == []


@pytest.mark.parametrize("pid", ["0", "²", "1" * 20, "-1", "12a"])
def test_a_marker_whose_pid_is_not_a_pid_is_left_alone(tmp_path, pid):
    path = tmp_path / f"{MARKER_PREFIX}{KEY}-{pid}"
    path.write_text(NAME)
    assert unfinished_restores(tmp_path, KEY) == [] and path.exists()


@pytest.mark.parametrize("content", [b"\xff\xfe not ascii", NAME.encode().replace(b".kv", b"\x00.kv"), b"x" * 5000])
def test_a_marker_with_content_no_restore_wrote_names_nothing(tmp_path, content):
    path = tmp_path / f"{MARKER_PREFIX}{KEY}-{dead_pid()}"
    path.write_bytes(content)
    assert unfinished_restores(tmp_path, KEY) == [] and not path.exists()


def test_a_marker_that_cannot_be_written_refuses_the_restore(tmp_path):
    with pytest.raises(RestoreUnguarded), restoring(tmp_path / "missing", KEY, NAME):
        pytest.fail("restored without a marker")
