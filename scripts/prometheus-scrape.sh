#!/usr/bin/env bash
# A real Prometheus (Debian's package) scrapes a running slm-server on loopback, and the query API must show
# the target up and slm_* series present. Installs prometheus with apt if missing; leaves nothing running.
#
#   scripts/prometheus-scrape.sh            (run from the repository root, after `make setup`)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
command -v prometheus >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
app_port=$(free_port); prom_port=$(free_port)

.venv/bin/slm-server serve --port "$app_port" >"$work/server.log" 2>&1 & pids+=($!)
cat >"$work/prometheus.yml" <<YAML
global: {scrape_interval: 1s}
scrape_configs:
  - job_name: slm
    static_configs: [{targets: ["127.0.0.1:$app_port"]}]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 & pids+=($!)

wait_for() { for _ in $(seq 120); do if eval "$1"; then return 0; fi; sleep 0.5; done; echo "timed out: $1"; return 1; }
wait_for "curl -sf http://127.0.0.1:$app_port/health >/dev/null"
curl -sf "http://127.0.0.1:$app_port/v1/chat/completions" \
  -d '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}' >/dev/null
query() { curl -sf "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$1"; }
has_result() { query "$1" | $PY -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; sys.exit(0 if r else 1)'; }
wait_for "has_result 'up{job=\"slm\"} == 1'"
wait_for "has_result 'slm_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}'"
for metric in slm_generated_tokens_total slm_time_to_first_token_seconds_count slm_models_loaded slm_batch_tokens_count; do
  has_result "$metric" || { echo "missing in Prometheus: $metric"; exit 1; }
done
echo "prometheus scraped slm-server: target up, slm_* series present"
query 'slm_generated_tokens_total'; echo
