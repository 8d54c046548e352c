// The models page: every models.yaml entry from GET /models, with load and unload buttons; refreshed when a
// model event arrives.

import { el, formatBytes, getJSON, postJSON } from "./api.js";
import { onModelEvent } from "./events.js";

const $ = (id) => document.getElementById(id);
let visible = false;
let subscribed = false;

export const modelsPage = {
  show() {
    visible = true;
    refresh();
    if (!subscribed) {
      subscribed = true;
      onModelEvent((event) => {
        if (visible && event.kind === "event") refresh();
      });
    }
  },
  hide() {
    visible = false;
  },
};

function showError(error) {
  $("models-error").hidden = !error;
  $("models-error").textContent = error ? error.message : "";
}

async function refresh() {
  let entries;
  try {
    entries = (await getJSON("/models")).data;
  } catch (error) {
    return showError(error);
  }
  showError(null);
  $("models-rows").replaceChildren(...entries.map(row));
}

function source(src) {
  const where = { path: src.path, package: src.package, huggingface: src.repo_id, safetensors: src.dir }[src.kind];
  const file = src.kind === "huggingface" && src.filename ? ` / ${src.filename}` : "";
  return `${src.kind}: ${where ?? ""}${file}`;
}

function status(entry) {
  const value = entry.status.value;
  const cell = el("td", { className: `status ${value}${entry.status.failed ? " failed" : ""}` }, value);
  if (entry.status.failed) cell.append(el("div", { className: "small error-text" }, entry.status.message ?? "failed"));
  return cell;
}

function keepAlive(seconds) {
  if (seconds == null) return "until evicted";
  return seconds >= 60 ? `${+(seconds / 60).toFixed(1)} min` : `${seconds} s`;
}

function row(entry) {
  const loaded = entry.status.value === "loaded";
  const button = el(
    "button",
    {
      type: "button",
      className: loaded ? "unload" : "load",
      disabled: entry.status.value === "loading" || (!loaded && !entry.files_present),
      onclick: () => act(button, loaded ? "unload" : "load", entry.id),
    },
    loaded ? "Unload" : "Load",
  );
  return el(
    "tr",
    { dataset: { model: entry.id } },
    el("td", {}, el("strong", {}, entry.id), el("div", { className: "small muted" }, entry.description)),
    el("td", {}, entry.kind),
    el("td", { className: "small" }, source(entry.source)),
    el("td", {}, entry.files_present ? "present" : "missing"),
    status(entry),
    el("td", {}, loaded ? formatBytes(entry.resident_bytes) : "–"),
    el("td", {}, keepAlive(entry.keep_alive)),
    el("td", { className: "small" }, entry.aliases.join(", ") || "–"),
    el("td", {}, entry.in_flight),
    el("td", {}, entry.restarts),
    el("td", {}, button),
  );
}

async function act(button, action, model) {
  button.disabled = true;
  button.textContent = action === "load" ? "Loading…" : "Unloading…";
  try {
    await postJSON(`/models/${action}`, { model });
    showError(null);
  } catch (error) {
    showError(error);
  }
  await refresh();
}
