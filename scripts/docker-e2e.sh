#!/usr/bin/env bash
# End-to-end check of the Docker deployment on this machine, with no registry and no change to the host's
# network: a private dockerd (no bridge, no iptables, no IP forwarding), the Debian base image built with
# debootstrap and named debian:bookworm-slim inside that engine (so the Dockerfile's and compose's default base is
# the one built on), the project image, the compose stack on the host network, real requests, the choice of
# llama.cpp's CPU variant, then everything down. Needs root. Exits non-zero on any failure and leaves nothing
# running.
#
#   scripts/docker-e2e.sh        (or: make docker-e2e)
#   SLM_E2E_EXTRAS=ray scripts/docker-e2e.sh    the image with Ray in it (--build-arg EXTRAS=ray), and the KubeRay
#                                               RayService's Serve application run in it and answering a chat
set -euo pipefail

cd "$(dirname "$0")/.."
REPO="$PWD"
PROJECT=slm-e2e
PORT="${SLM_E2E_PORT:-18000}"
KEY="e2e-$(date +%s)-$RANDOM"
DOCKER=/usr/bin/docker
WORK="$(mktemp -d /tmp/slm-e2e.XXXXXX)"
export DOCKER_BUILDKIT=1
# The default path is the one tested: no base image chosen from the environment.
unset SLM_BASE_IMAGE
BASE=debian:bookworm-slim
EXTRAS="${SLM_E2E_EXTRAS:-}"
RAY_CONTAINER=slm-e2e-ray

log() { printf '[docker-e2e %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { log "FAIL: $*"; exit 1; }

# A 401 without the API key, then a chat completion with it, at base URL $1 ($2 names where, for the messages).
check_chat() {
    local status reply
    status=$(curl -s -o /dev/null -w '%{http_code}' "$1/v1/chat/completions" \
        -d '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}]}')
    [ "$status" = 401 ] || fail "$2: a request without the API key got $status, not 401"
    reply=$(curl -sf "$1/v1/chat/completions" -H "Authorization: Bearer $KEY" \
        -d '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16}') \
        || fail "$2: the authenticated chat completion failed"
    echo "$reply" | python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["choices"][0]["message"]["content"], r; print(sys.argv[1], "chat reply:", r["choices"][0]["message"]["content"])' "$2"
}

[ "$(id -u)" = 0 ] || fail "run as root (it starts a private dockerd)"

network_state() {
    sysctl -n net.ipv4.ip_forward
    ip -o link show | awk -F': ' '{print $2}' | sort
    iptables-save 2>/dev/null | grep -v '^#' | grep -v '^:' || true
}

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! command -v docker-compose >/dev/null; then
    log "installing docker.io, debootstrap and docker-compose from Debian"
    apt-get install -y -q docker.io debootstrap docker-compose >/dev/null
fi
network_state > "$WORK/network.before"

compose() {
    docker-compose -p "$PROJECT" -f "$WORK/compose.resolved.yml" "$@"
}

cleanup() {
    local status=$?
    set +e
    if [ -n "${DOCKER_HOST:-}" ]; then
        compose logs --no-color --tail 40 > "$WORK/container.log" 2>&1
        compose down -v --remove-orphans >/dev/null 2>&1
    fi
    [ -n "${HUB_PID:-}" ] && kill "$HUB_PID" 2>/dev/null
    if [ -n "${DOCKER_HOST:-}" ] && $DOCKER inspect "$RAY_CONTAINER" >/dev/null 2>&1; then
        $DOCKER logs --tail 40 "$RAY_CONTAINER" > "$WORK/container.log" 2>&1
        $DOCKER rm -f "$RAY_CONTAINER" >/dev/null 2>&1
    fi
    "$REPO/scripts/private-dockerd.sh" stop
    rm -f "$REPO/docker/ca-certificates/host-bundle.crt"
    network_state > "$WORK/network.after"
    if ! diff -q "$WORK/network.before" "$WORK/network.after" >/dev/null; then
        log "FAIL: the host's network state changed:"; diff "$WORK/network.before" "$WORK/network.after"
        status=1
    fi
    if pgrep -f "dockerd --host unix://${SLM_DOCKER_ROOT:-/var/lib/slm-docker}" >/dev/null; then
        log "FAIL: dockerd is still running"; status=1
    fi
    if findmnt -rn -o TARGET | grep -q "^${SLM_DOCKER_ROOT:-/var/lib/slm-docker}"; then
        log "FAIL: mounts of the private dockerd are left"; status=1
    fi
    if [ $status -ne 0 ] && [ -f "$WORK/container.log" ]; then
        log "container log tail:"; tail -20 "$WORK/container.log"
    fi
    rm -rf "$WORK"
    log "$([ $status -eq 0 ] && echo PASSED || echo FAILED) (nothing left running)"
    exit $status
}
trap cleanup EXIT

export DOCKER_HOST
DOCKER_HOST="$(scripts/private-dockerd.sh start)"
log "private dockerd at $DOCKER_HOST"

# No registry here: the debootstrap base stands in for Debian's official image, under its name, in this engine only.
DOCKER_CLI=$DOCKER docker/build-base-image.sh "$BASE"

# The build reaches PyPI through this host's TLS setup: trust the host's CA bundle inside the build.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt docker/ca-certificates/host-bundle.crt
fi
log "building the image${EXTRAS:+ with EXTRAS=$EXTRAS}"
started=$(date +%s)
$DOCKER build --network host --build-arg EXTRAS="$EXTRAS" -t slm-server:latest . > "$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log"; fail "image build"; }
log "image built in $(( $(date +%s) - started )) s; size $($DOCKER image inspect slm-server:latest --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"
[ "$($DOCKER image inspect slm-server:latest --format '{{index .RootFS.Layers 0}}')" = \
  "$($DOCKER image inspect "$BASE" --format '{{index .RootFS.Layers 0}}')" ] || fail "the image is not built on $BASE"
log "the image is built on $BASE, the Dockerfile's default BASE_IMAGE"

# Static facts about the image: non-root user, healthcheck, the CPU backends for runtime dispatch.
[ "$($DOCKER image inspect slm-server:latest --format '{{.Config.User}}')" = slm ] || fail "image user is not slm"
$DOCKER image inspect slm-server:latest --format '{{json .Config.Healthcheck}}' | grep -q /health || fail "no HEALTHCHECK"
$DOCKER run --rm --network host --entrypoint ls slm-server:latest /opt/venv/lib/ggml-backends > "$WORK/backends.txt"
variants=$(grep -c '^libggml-cpu-' "$WORK/backends.txt" || true)
[ "$variants" -ge 10 ] || fail "only $variants CPU backend variants in the image"
log "image: user slm, HEALTHCHECK on /health, $variants CPU backend variants"

# The stack is docker-compose.yml itself, resolved, with two changes for an engine without a bridge network:
# the host network (so no port publishing; the server binds 127.0.0.1:$PORT itself) and a test API key.
cat > "$WORK/compose.e2e.yml" <<YAML
services:
  slm-server:
    environment:
      SLM_API_KEYS: $KEY
      SLM_HOST: 127.0.0.1
      SLM_PORT: "$PORT"
YAML
docker-compose -f docker-compose.yml -f "$WORK/compose.e2e.yml" config > "$WORK/compose.merged.yml"
python3 - "$WORK/compose.merged.yml" "$WORK/compose.resolved.yml" <<'PY'
import sys, yaml
stack = yaml.safe_load(open(sys.argv[1]))
service = stack["services"]["slm-server"]
assert service["ports"] == ["127.0.0.1:8000:8000/tcp"], service["ports"]  # loopback-only by default
assert service["build"]["args"]["BASE_IMAGE"] == "debian:bookworm-slim", service["build"]  # the base built on
del service["ports"]
service["network_mode"] = "host"
yaml.safe_dump(stack, open(sys.argv[2], "w"))
PY
compose up -d --no-build
CONTAINER=$(compose ps -q slm-server)
log "waiting for the container to be healthy"
for _ in $(seq 1 60); do
    health=$($DOCKER inspect --format '{{.State.Health.Status}}' "$CONTAINER")
    [ "$health" = healthy ] && break
    [ "$($DOCKER inspect --format '{{.State.Running}}' "$CONTAINER")" = true ] || fail "the container stopped"
    sleep 3
done
[ "$health" = healthy ] || fail "the container is $health, not healthy"
log "healthy"

URL="http://127.0.0.1:$PORT"
check_chat "$URL" "compose"
dims=$(curl -sf "$URL/v1/embeddings" -H "Authorization: Bearer $KEY" \
    -d '{"model": "all-minilm-l6-v2", "input": "offline embeddings"}' \
    | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["data"][0]["embedding"]))') || fail "embeddings failed"
[ "$dims" = 384 ] || fail "embedding has $dims dimensions, not 384"
log "401 without a key, chat and embeddings (384 dims) with it"

uid=$(compose exec -T slm-server id -u | tr -d '\r')
[ "$uid" != 0 ] || fail "the server runs as root"
log "the server runs as uid $uid"
# The CPU variant llama.cpp chose at run time, read from the libggml-cpu-*.so mapped into the server's processes (the
# model workers are loaded by the requests above), against the best one for this host's /proc/cpuinfo flags
# (scripts/cpu_variant.py mirrors llama.cpp's scoring; on AMX hosts it also checks AMX extra buffers are off).
if [ "$(uname -m)" = x86_64 ]; then
    compose exec -T slm-server sh -c 'cat /proc/[0-9]*/maps 2>/dev/null' > "$WORK/maps.txt" || true
    compose logs --no-color slm-server > "$WORK/server.log"
    log "host CPU: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); best variant for its flags: $(python3 scripts/cpu_variant.py best)"
    verdict=$(python3 scripts/cpu_variant.py check --maps "$WORK/maps.txt" --backends "$WORK/backends.txt" \
        --log "$WORK/server.log") || fail "llama.cpp's CPU variant (above)"
    log "$verdict"
else
    log "not x86_64: the CPU variant check is skipped"
fi
compose kill -s HUP slm-server
for _ in $(seq 1 20); do compose logs --no-color slm-server | grep -q "models file reloaded" && break; sleep 0.5; done
compose logs --no-color slm-server | grep -q "models file reloaded" || fail "SIGHUP did not reload models.yaml"
[ "$($DOCKER inspect --format '{{.State.Running}}' "$CONTAINER")" = true ] || fail "SIGHUP stopped the container"
log "SIGHUP through docker compose kill reloaded models.yaml"

# Compose v1 (Debian's docker-compose) refuses a one-off `run` beside a running host-network service
# ("host type networking can't be used with links"), so the stack goes down first; the volume stays.
compose down
log "compose down (the models volume is kept)"

# `slm-server pull` through `docker compose run`, against a local stand-in for the Hugging Face Hub.
HUB_PORT=$((PORT + 1))
head -c 3000000 /dev/urandom > "$WORK/blob.gguf"
python3 - "$HUB_PORT" "$WORK/blob.gguf" > "$WORK/hub.log" 2>&1 <<'PY' &
import sys, threading
sys.path.insert(0, ".")
from tests.fake_hub import FakeHub, HubFile
hub = FakeHub(port=int(sys.argv[1]))
hub.add("e2e-org/e2e-model", "e2e.gguf", HubFile(open(sys.argv[2], "rb").read()))
with hub:
    print("ready", flush=True)
    threading.Event().wait()
PY
HUB_PID=$!
for _ in $(seq 1 50); do grep -q ready "$WORK/hub.log" 2>/dev/null && break; sleep 0.2; done
cat > "$WORK/models.yaml" <<YAML
models:
  - name: e2e-model
    source: {repo_id: e2e-org/e2e-model, filename: e2e.gguf, revision: main}
YAML
chmod a+r "$WORK/models.yaml"; chmod a+x "$WORK"
compose run --rm --no-deps -T -v "$WORK/models.yaml:/app/models.yaml:ro" -e HF_ENDPOINT="http://127.0.0.1:$HUB_PORT" \
    slm-server pull e2e-model | tee "$WORK/pull.log"
grep -q "e2e-model: present at /data/huggingface/hub/models--e2e-org--e2e-model/snapshots/" "$WORK/pull.log" \
    || fail "pull did not report the file in the models volume"
compose run --rm --no-deps -T -v "$WORK/models.yaml:/app/models.yaml:ro" slm-server list | tee "$WORK/list.log"
grep -E -q "^e2e-model +hf:e2e-org/e2e-model/e2e.gguf +yes" "$WORK/list.log" || fail "list does not show the pulled model"
log "pull through docker compose run put the model in the volume; list sees it"

compose down -v
log "compose down -v"

# With Ray in the image, the KubeRay RayService's Serve application (its serveConfigV2, as KubeRay would deploy it)
# runs in this same image through `slm-server ray`, adapted to one container: loopback on its own port, the test
# key from a mounted key file (the Secret's place), one replica of one CPU instead of autoscaling.
if [[ ",$EXTRAS," == *,ray,* ]]; then
    RAY_PORT=$((PORT + 2))
    ray_version=$($DOCKER run --rm --network host --entrypoint python3 slm-server:latest \
        -c 'import ray.serve, server.cluster.ray_app; print(ray.__version__)') || fail "Ray Serve is not in the image"
    python3 - deploy/k8s/ray/rayservice.yaml "$RAY_PORT" "$WORK/serve.yaml" "$ray_version" <<'PY' || fail "serve config"
import sys, yaml
service = yaml.safe_load(open(sys.argv[1]))
expected = service["spec"]["rayClusterConfig"]["rayVersion"]
assert expected == sys.argv[4], f"the RayService says Ray {expected}; the image has {sys.argv[4]}"
config = yaml.safe_load(service["spec"]["serveConfigV2"])
config["proxy_location"] = "HeadOnly"
config["http_options"] = {"host": "127.0.0.1", "port": int(sys.argv[2])}
(app,) = config["applications"]
app["args"]["api_key_file"] = "/config/api-keys"
for deployment in app["deployments"]:
    if deployment["name"] == "ModelReplica":
        del deployment["autoscaling_config"]
        deployment["num_replicas"] = 1
        deployment["ray_actor_options"]["num_cpus"] = 1
yaml.safe_dump(config, open(sys.argv[3], "w"))
PY
    printf '%s\n' "$KEY" > "$WORK/api-keys"
    chmod a+r "$WORK/serve.yaml" "$WORK/api-keys"
    log "Ray $ray_version in the image (the RayService's rayVersion); starting its Serve application"
    $DOCKER run -d --name "$RAY_CONTAINER" --network host --shm-size 512m --entrypoint slm-server \
        -v "$WORK/serve.yaml:/config/serve.yaml:ro" -v "$WORK/api-keys:/config/api-keys:ro" \
        slm-server:latest ray --config /config/serve.yaml > /dev/null
    RAY_URL="http://127.0.0.1:$RAY_PORT"
    for _ in $(seq 1 90); do
        ray_health=$(curl -s -o /dev/null -w '%{http_code}' "$RAY_URL/health" || true)  # 000 until it listens
        [ "$ray_health" = 200 ] && break
        [ "$($DOCKER inspect --format '{{.State.Running}}' "$RAY_CONTAINER")" = true ] || fail "the Ray container stopped"
        sleep 2
    done
    [ "$ray_health" = 200 ] || fail "Ray Serve never answered /health (last status: $ray_health)"
    check_chat "$RAY_URL" "Ray Serve"
    $DOCKER rm -f "$RAY_CONTAINER" > /dev/null
    log "the RayService's Serve application ran in the image: 401 without a key, a chat with it"
fi
