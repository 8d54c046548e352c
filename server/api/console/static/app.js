// The console's shell: which page the path names, the navigation, and the key prompt.

import { apiKey, onKeyNeeded, setApiKey } from "./api.js";
import { restartEvents } from "./events.js";
import { livePage } from "./live.js";
import { modelsPage } from "./models.js";
import { playgroundPage } from "./playground.js";

const pages = { playground: playgroundPage, models: modelsPage, live: livePage };
let current = null;

function pageOf(path) {
  const name = path.replace(/\/+$/, "").split("/").pop();
  return name in pages ? name : "playground";
}

function show(name) {
  if (current && current !== name) pages[current].hide?.();
  current = name;
  for (const page of Object.keys(pages)) {
    document.getElementById(`page-${page}`).hidden = page !== name;
    document.getElementById(`nav-${page}`).classList.toggle("active", page === name);
  }
  document.title = `slm-server · ${name}`;
  pages[name].show();
}

function showKeyState() {
  const key = apiKey();
  document.getElementById("key-state").textContent = key ? "key set for this tab" : "";
  document.getElementById("key-forget").hidden = !key;
}

function askForKey(error) {
  const form = document.getElementById("login");
  document.getElementById("login-reason").textContent = apiKey()
    ? `The key was refused: ${error.message}`
    : "Enter an API key (an admin key opens the models and live pages too).";
  form.hidden = false;
  document.getElementById("login-key").focus();
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("login-key");
  setApiKey(input.value.trim());
  input.value = "";
  document.getElementById("login").hidden = true;
  showKeyState();
  restartEvents();
  show(current);
});

document.getElementById("key-forget").addEventListener("click", () => {
  setApiKey(null);
  showKeyState();
  show(current);
});

for (const link of document.querySelectorAll("nav a[data-page]")) {
  link.addEventListener("click", (event) => {
    event.preventDefault();
    history.pushState(null, "", link.getAttribute("href"));
    show(link.dataset.page);
  });
}
window.addEventListener("popstate", () => show(pageOf(location.pathname)));

onKeyNeeded(askForKey);
showKeyState();
show(pageOf(location.pathname));
