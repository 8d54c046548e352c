// The playground: chat with streaming (deltas shown as they arrive), or embeddings; per answer its token usage,
// time to first token and tokens per second. The conversation lives in this page's memory only.

import { ApiError, eventData, getJSON, postJSON, request } from "./api.js";

const $ = (id) => document.getElementById(id);
const conversation = []; // {role, content} sent back as history (system prompt excluded)
let models = [];
let running = null; // the AbortController of the answer in progress
let loaded = false;

export const playgroundPage = {
  show() {
    if (!loaded) loadModels();
  },
};

async function loadModels() {
  try {
    // The admin list says which models are chat and which embedding; a client key gets /v1/models instead.
    const entries = (await getJSON("/models")).data;
    models = entries.filter((m) => m.kind === "chat" || m.kind === "embedding").map((m) => ({ id: m.id, kind: m.kind }));
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 403) return showError(error);
    try {
      models = (await getJSON("/v1/models")).data.map((m) => ({ id: m.id, kind: "chat" }));
    } catch (inner) {
      return showError(inner);
    }
  }
  loaded = true;
  const select = $("pg-model");
  const previous = select.value;
  select.replaceChildren(...models.map((m) => new Option(`${m.id} (${m.kind})`, m.id)));
  if (models.some((m) => m.id === previous)) select.value = previous;
  showKind();
}

function modelKind() {
  return models.find((m) => m.id === $("pg-model").value)?.kind ?? "chat";
}

function showKind() {
  const kind = modelKind();
  $("pg-chat-settings").hidden = kind !== "chat";
  $("pg-kind").textContent = kind === "embedding" ? "Embedding model: each message is embedded." : "";
}

function showError(error) {
  $("pg-error").hidden = !error;
  $("pg-error").textContent = error ? error.message : "";
}

function optionalNumber(id, parse) {
  const text = $(id).value.trim();
  return text === "" ? undefined : parse(text);
}

function parseJSON(id, what) {
  const text = $(id).value.trim();
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(`${what} is not valid JSON: ${error.message}`);
  }
}

function chatBody() {
  const messages = [];
  const system = $("pg-system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...conversation);
  const body = { model: $("pg-model").value, messages, stream: true, stream_options: { include_usage: true } };
  const params = {
    temperature: optionalNumber("pg-temperature", Number),
    top_p: optionalNumber("pg-top-p", Number),
    max_tokens: optionalNumber("pg-max-tokens", (t) => parseInt(t, 10)),
    seed: optionalNumber("pg-seed", (t) => parseInt(t, 10)),
  };
  for (const [name, value] of Object.entries(params)) if (value !== undefined) body[name] = value;
  if ($("pg-ignore-eos").checked) body.ignore_eos = true;
  const format = $("pg-format").value;
  if (format === "json_object") body.response_format = { type: "json_object" };
  if (format === "json_schema") {
    const schema = parseJSON("pg-schema", "The JSON schema");
    body.response_format = { type: "json_schema", json_schema: { name: "console", schema } };
  }
  const tools = parseJSON("pg-tools", "Tools");
  if (tools !== undefined) {
    if (!Array.isArray(tools)) throw new Error("Tools must be a JSON array.");
    body.tools = tools;
  }
  return body;
}

function addMessage(role, text) {
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = text;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role;
  const stats = document.createElement("div");
  stats.className = "stats";
  const item = document.createElement("li");
  item.className = `msg ${role}`;
  item.append(label, content, stats);
  $("pg-messages").append(item);
  item.scrollIntoView({ block: "end" });
  return { item, content, stats };
}

function setRunning(controller) {
  running = controller;
  $("pg-send").disabled = Boolean(controller);
  $("pg-stop").disabled = !controller;
}

async function send() {
  const text = $("pg-input").value;
  if (!text.trim() || running) return;
  showError(null);
  if (modelKind() === "embedding") return embed(text);
  conversation.push({ role: "user", content: text });
  let body;
  try {
    body = chatBody();
  } catch (error) {
    conversation.pop();
    return showError(error);
  }
  $("pg-input").value = "";
  addMessage("user", text);
  await stream(body);
}

async function stream(body) {
  const view = addMessage("assistant", "");
  view.item.classList.add("streaming");
  const controller = new AbortController();
  setRunning(controller);
  const started = performance.now();
  let first = null;
  let usage = null;
  let finish = null;
  let answer = "";
  const toolCalls = [];
  let stopped = false;
  try {
    const response = await request("/v1/chat/completions", { method: "POST", body, signal: controller.signal });
    for await (const data of eventData(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(0, chunk.error.message, chunk.error.code);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices ?? []) {
        const delta = choice.delta ?? {};
        if (delta.content || delta.tool_calls || delta.reasoning_content) first ??= performance.now();
        if (delta.content) answer += delta.content;
        for (const call of delta.tool_calls ?? []) {
          const slot = (toolCalls[call.index ?? 0] ??= { name: "", arguments: "" });
          if (call.function?.name) slot.name += call.function.name;
          if (call.function?.arguments) slot.arguments += call.function.arguments;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      view.content.textContent = answer + toolCalls.map((c) => `\n→ ${c.name}(${c.arguments})`).join("");
    }
  } catch (error) {
    if (error.name === "AbortError") stopped = true;
    else showError(error);
  } finally {
    setRunning(null);
    view.item.classList.remove("streaming");
  }
  const ended = performance.now();
  conversation.push({ role: "assistant", content: answer });
  view.stats.textContent = statsLine({ started, first, ended, usage, finish, stopped });
  view.item.classList.add(stopped ? "stopped" : "done");
}

function statsLine({ started, first, ended, usage, finish, stopped }) {
  const parts = [];
  if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
  if (first !== null) parts.push(`TTFT ${Math.round(first - started)} ms`);
  if (usage && first !== null && ended > first && usage.completion_tokens > 1) {
    // tokens after the first, over the time after the first: the decode rate
    parts.push(`${((usage.completion_tokens - 1) / ((ended - first) / 1000)).toFixed(1)} tokens/s`);
  }
  if (stopped) parts.push("stopped");
  else if (finish) parts.push(`finish: ${finish}`);
  return parts.join(" · ");
}

async function embed(text) {
  $("pg-input").value = "";
  addMessage("user", text);
  const view = addMessage("embedding", "");
  const started = performance.now();
  try {
    const result = await postJSON("/v1/embeddings", { model: $("pg-model").value, input: text });
    const vector = result.data[0].embedding;
    const head = vector.slice(0, 8).map((v) => v.toFixed(4)).join(", ");
    view.content.textContent = `${vector.length} dimensions: [${head}${vector.length > 8 ? ", …" : ""}]`;
    const ms = Math.round(performance.now() - started);
    view.stats.textContent = `${result.usage.prompt_tokens} tokens · ${ms} ms`;
    view.item.classList.add("done");
  } catch (error) {
    view.item.remove();
    showError(error);
  }
}

$("pg-form").addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
$("pg-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    send();
  }
});
// Aborting the fetch closes the connection: the server sees the client leave and cancels the generation.
$("pg-stop").addEventListener("click", () => running?.abort());
$("pg-clear").addEventListener("click", () => {
  if (running) running.abort();
  conversation.length = 0;
  $("pg-messages").replaceChildren();
  showError(null);
});
$("pg-model").addEventListener("change", showKind);
$("pg-format").addEventListener("change", () => {
  $("pg-schema-label").hidden = $("pg-format").value !== "json_schema";
});
