// Keep the store live: one EventSource, re-fetch on every (re)connect, health and staleness.

import { api, eventsUrl } from "./api.js";
import { duration } from "./format.js";
import * as store from "./store.js";

const HEALTH_EVERY_MS = 10000;
const MAX_BACKOFF_MS = 10000;

let source = null;
let status = "connecting"; // connecting | live | polling | lost
let health = { ok: true, text: "" };
let backoff = 1000;
let retryTimer = null;
const transitionListeners = new Set();

export function onTransition(fn) {
  transitionListeners.add(fn);
  return () => transitionListeners.delete(fn);
}

function setStatus(next) {
  status = next;
  document.body.classList.toggle("stale", next === "lost");
  render();
}

// Fetch every node view and apply it as a diff; return whether the monitor answered.
export async function refresh() {
  try {
    const data = await api("/v1/nodes");
    store.replaceAll(data.nodes, data.now);
    return true;
  } catch {
    return false; // unreachable, refused or garbled: the caller shows the connection as lost
  }
}

function parse(event) {
  try {
    return JSON.parse(event.data);
  } catch {
    return null;
  }
}

function connect() {
  clearTimeout(retryTimer);
  if (source) source.close();
  source = new EventSource(eventsUrl());
  source.addEventListener("open", () => {
    backoff = 1000;
    setStatus("live");
    refresh(); // events missed while disconnected are not replayed: catch up
  });
  source.addEventListener("hello", (e) => store.touch(parse(e)?.now ?? null));
  source.addEventListener("node", (e) => {
    const view = parse(e);
    if (view?.name) store.upsert(view);
  });
  source.addEventListener("removed", (e) => {
    const gone = parse(e);
    if (gone?.name) store.remove(gone.name);
  });
  source.addEventListener("transition", (e) => {
    const t = parse(e);
    if (!t?.node) return;
    const view = store.get(t.node);
    // The fresh node view follows, but the state change should show at once.
    if (view) store.upsert({ ...view, state: t.new, since: t.at, reason: t.reason });
    for (const fn of transitionListeners) fn(t);
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) retry();
    else setStatus("lost"); // the browser reconnects by itself
  });
}

// The stream was refused (401, 404, 5xx): poll a snapshot, then try the stream again.
function retry() {
  clearTimeout(retryTimer);
  retryTimer = setTimeout(async () => {
    const answered = await refresh();
    setStatus(answered ? "polling" : "lost");
    connect();
  }, backoff);
  backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
}

async function checkHealth() {
  try {
    const resp = await fetch("/healthz", { cache: "no-store" });
    if (resp.ok) {
      health = { ok: true, text: "" };
    } else {
      let message = `${resp.status}`;
      try {
        message = (await resp.json()).error || message;
      } catch {
        /* plain text */
      }
      health = { ok: false, text: message };
    }
  } catch {
    health = { ok: false, text: "unreachable" };
    if (status === "live") {
      setStatus("lost");
      connect(); // the stream looks open but the monitor is gone: a half-open socket
    }
  }
  render();
}

function render() {
  const el = document.getElementById("health");
  const text = document.getElementById("health-text");
  const stale = store.staleSeconds();
  let kind = "ok";
  let words = "live";
  if (status === "connecting") [kind, words] = ["wait", "connecting…"];
  else if (status === "lost") [kind, words] = ["bad", "disconnected"];
  else if (status === "polling") [kind, words] = ["warn", "no live stream; polling"];
  else if (!health.ok) [kind, words] = ["warn", `monitor: ${health.text}`];
  el.dataset.kind = kind;
  el.title = health.ok ? "monitor healthy" : `monitor health: ${health.text}`;
  if (text.textContent !== words) text.textContent = words;
  const banner = document.getElementById("banner");
  const lost = status === "lost";
  if (banner.hidden === lost) {
    banner.hidden = !lost;
    // Announced once when the connection drops; the ticking age below is not re-announced.
    document.getElementById("banner-text").textContent = lost
      ? "Connection to the monitor lost. Reconnecting…"
      : "";
  }
  if (lost) {
    const age = stale == null ? "No data received yet." : `The data shown is ${duration(stale)} old.`;
    const line = document.getElementById("banner-age");
    if (line.textContent !== age) line.textContent = age;
  }
}

export function start() {
  refresh().then((answered) => {
    if (!answered) setStatus("lost");
    connect();
  });
  setInterval(render, 1000);
  setInterval(checkHealth, HEALTH_EVERY_MS);
  checkHealth();
}
