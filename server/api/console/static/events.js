// One stream of model events (GET /models/sse) shared by the pages that show them; reconnects after a pause
// when it ends (the server drops a slow reader and ends the stream when it shuts down).

import { ApiError, eventData, request } from "./api.js";

const RECONNECT_MS = 3000;
const listeners = new Set();
let running = false;

export function onModelEvent(listener) {
  listeners.add(listener);
  start();
}

// Listeners also hear the stream's state: {kind: "state", text}.
function tell(event) {
  listeners.forEach((listener) => listener(event));
}

async function start() {
  if (running) return;
  running = true;
  for (;;) {
    try {
      const response = await request("/models/sse");
      tell({ kind: "state", text: "connected" });
      for await (const data of eventData(response)) {
        let payload;
        try {
          payload = JSON.parse(data);
        } catch {
          continue;
        }
        if (payload.error) tell({ kind: "state", text: `stream ended: ${payload.error.message}` });
        else tell({ kind: "event", payload });
      }
    } catch (error) {
      tell({ kind: "state", text: `no event stream: ${error.message}` });
      if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
        running = false; // a page that is shown again starts it, once a key is given
        return;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
  }
}

export function restartEvents() {
  if (!running && listeners.size) start();
}
