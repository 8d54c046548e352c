#!/bin/sh
# The container's entrypoint. In a container the server binds 0.0.0.0, where it refuses to serve without an API
# key; so when `serve` is given none (no SLM_API_KEYS, SLM_API_KEY_FILE, --api-key, --api-key-file,
# --insecure-no-auth or SLM_INSECURE_NO_AUTH), a random key is generated once into the secrets volume and
# served from there. The key itself is never logged: the log says where to read it. Other commands (pull, list,
# convert) run unchanged.
set -eu

KEY_FILE="${SLM_GENERATED_KEY_FILE:-/data/secrets/api-key}"

log() { printf '%s slm-entrypoint: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

key_configured() {
    if [ -n "${SLM_API_KEYS:-}" ] || [ -n "${SLM_API_KEY_FILE:-}" ]; then
        return 0
    fi
    case "$(printf '%s' "${SLM_INSECURE_NO_AUTH:-}" | tr '[:upper:]' '[:lower:]')" in
        1 | true | yes | on | t | y) return 0 ;;
    esac
    for arg in "$@"; do
        case "$arg" in
            --api-key | --api-key=* | --api-key-file | --api-key-file=* | --insecure-no-auth) return 0 ;;
        esac
    done
    return 1
}

if [ "${1:-}" = serve ] && ! key_configured "$@"; then
    if [ ! -s "$KEY_FILE" ]; then
        mkdir -p "$(dirname "$KEY_FILE")"
        (umask 077 && python3 -c 'import secrets; print("sk-slm-" + secrets.token_urlsafe(32))' > "$KEY_FILE.tmp")
        mv "$KEY_FILE.tmp" "$KEY_FILE"
        log "no API key configured: generated one into $KEY_FILE"
    fi
    log "API key: requests need 'Authorization: Bearer <key>', the key being in $KEY_FILE" \
        "(docker compose exec slm-server cat $KEY_FILE); set SLM_API_KEYS in slm-server.env to choose your own"
    export SLM_API_KEY_FILE="$KEY_FILE"
fi
exec slm-server "$@"
