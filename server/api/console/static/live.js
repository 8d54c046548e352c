// The live view: GET /admin/stats every POLL_MS, the last HISTORY_MS kept in this page's memory and drawn per
// model; model events (loads, unloads, crashed workers) from GET /models/sse as they happen.

import { ApiError, el, getJSON } from "./api.js";
import { sparkline } from "./chart.js";
import { onModelEvent } from "./events.js";

const POLL_MS = 2000;
const HISTORY_MS = 5 * 60 * 1000;
const MAX_EVENTS = 200;
const $ = (id) => document.getElementById(id);
const history = new Map(); // model -> [{at, requests, tokens, ttft, queue, active}]
let latest = null;
let timer = null;
let visible = false;
let eventsStarted = false;

const SERIES = [
  { key: "requests", label: "requests/s", format: (v) => v.toFixed(2) },
  { key: "tokens", label: "tokens/s", format: (v) => v.toFixed(1) },
  { key: "ttft", label: "TTFT", format: (v) => `${Math.round(v * 1000)} ms` },
  { key: "queue", label: "queue depth", format: (v) => String(v) },
];

export const livePage = {
  show() {
    visible = true;
    if (timer === null) poll();
    if (!eventsStarted) {
      eventsStarted = true;
      onModelEvent(showEvent);
    }
    render();
  },
  hide() {
    visible = false;
  },
};

async function poll() {
  timer = setTimeout(poll, POLL_MS); // keeps collecting while another page is shown: the history has no gaps
  let stats;
  try {
    stats = await getJSON("/admin/stats");
  } catch (error) {
    $("live-error").hidden = false;
    $("live-error").textContent = error.message;
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      clearTimeout(timer);
      timer = null; // polled again once the page is shown with a key
    }
    return;
  }
  $("live-error").hidden = true;
  const at = Date.now();
  for (const model of stats.data) {
    const points = history.get(model.id) ?? [];
    points.push({
      at,
      requests: model.requests_per_s,
      tokens: model.generated_tokens_per_s,
      ttft: model.ttft_mean_s,
      queue: model.queue_depth,
    });
    while (points.length && at - points[0].at > HISTORY_MS) points.shift();
    history.set(model.id, points);
  }
  if (latest === null) stats.events.forEach((payload) => showEvent({ kind: "event", payload, earlier: true }));
  latest = stats;
  if (visible) render();
}

function render() {
  if (!latest) return;
  const now = Date.now();
  $("live-window").textContent = `last 5 minutes, every ${POLL_MS / 1000} s; rates over the server's last ${
    latest.window_s == null ? "–" : latest.window_s.toFixed(0)
  } s`;
  // A card for each model that is loaded or has served; the others on one line.
  const active = latest.data.filter((m) => m.loaded || m.requests_total > 0 || m.restarts > 0);
  const idle = latest.data.filter((m) => !active.includes(m)).map((m) => m.id);
  active.sort((a, b) => Number(b.loaded) - Number(a.loaded) || a.id.localeCompare(b.id));
  $("live-models").replaceChildren(
    ...active.map((model) => card(model, history.get(model.id) ?? [], now)),
    ...(idle.length ? [el("p", { className: "muted small" }, `Not loaded, no requests yet: ${idle.join(", ")}`)] : []),
  );
}

function card(model, points, now) {
  const last = points.at(-1) ?? {};
  const charts = SERIES.map(({ key, label, format }) =>
    el(
      "div",
      { className: "series" },
      el("div", { className: "series-label" }, label, el("span", { className: "value" }, last[key] == null ? "–" : format(last[key]))),
      sparkline(points.map((p) => ({ at: p.at, value: p[key] })), HISTORY_MS, now),
    ),
  );
  const facts = [
    model.loaded ? "loaded" : "not loaded",
    `active sequences ${model.active_sequences ?? "–"}`,
    `${model.requests_total} requests`,
    `${model.generated_tokens_total} tokens generated`,
    `${model.loads} loads`,
    `${model.restarts} worker restarts`,
  ];
  return el(
    "div",
    { className: `live-model${model.loaded ? " loaded" : ""}`, dataset: { model: model.id } },
    el("h4", {}, model.id, el("span", { className: "small muted" }, facts.join(" · "))),
    el("div", { className: "charts" }, ...charts),
  );
}

function describe(payload) {
  if (payload.event === "models_reload") return "models.yaml re-read";
  const data = payload.data ?? {};
  const parts = [data.status ?? payload.event];
  if (data.reason) parts.push(`(${data.reason})`);
  if (data.load_seconds != null) parts.push(`in ${data.load_seconds.toFixed(2)} s`);
  if (data.message) parts.push(`: ${data.message}`);
  return parts.join(" ");
}

function showEvent(event) {
  if (event.kind !== "event") return;
  const { payload } = event;
  const time = payload.data?.time ? new Date(payload.data.time * 1000) : new Date();
  const failed = payload.data?.failed;
  const item = el(
    "li",
    { className: `${failed ? "failed" : ""}${event.earlier ? " earlier" : ""}` },
    el("time", {}, time.toLocaleTimeString()),
    el("strong", {}, payload.model),
    describe(payload),
  );
  $("live-events").prepend(item);
  while ($("live-events").children.length > MAX_EVENTS) $("live-events").lastChild.remove();
}
