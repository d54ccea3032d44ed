// The header's counts per state, the page title and the favicon, kept in step with the store.

import { STATES } from "./format.js";
import * as store from "./store.js";

const counts = new Map(STATES.map((s) => [s, 0]));
let frame = 0;
let lastTitle = "";
let lastIcon = "";

function recount() {
  for (const s of STATES) counts.set(s, 0);
  for (const view of store.all().values()) counts.set(view.state, (counts.get(view.state) || 0) + 1);
}

function worst() {
  return STATES.find((s) => s !== "left" && counts.get(s) > 0) || "none";
}

function favicon(state) {
  const css = getComputedStyle(document.documentElement);
  const colour = css.getPropertyValue(`--${state}`).trim() || "#888888";
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="8" cy="8" r="7" fill="${colour}"/></svg>`;
  return `data:image/svg+xml,${encodeURIComponent(svg)}`;
}

function render() {
  frame = 0;
  const list = document.getElementById("counts");
  const items = [];
  for (const state of STATES) {
    const n = counts.get(state);
    // Always show the alarming states, even at zero, so "0 down" is visible good news.
    if (!n && !["down", "suspect", "degraded", "up"].includes(state)) continue;
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `/?q=${encodeURIComponent(`state:${state}`)}`;
    a.className = "count";
    a.dataset.state = state;
    a.dataset.zero = String(n === 0);
    a.title = `show the ${state} nodes`;
    const num = document.createElement("b");
    num.textContent = String(n);
    a.append(num, ` ${state}`);
    li.append(a);
    items.push(li);
  }
  list.replaceChildren(...items);
  const down = counts.get("down");
  const title = down ? `(${down} down) pimon` : "pimon";
  if (title !== lastTitle) document.title = lastTitle = title;
  const icon = worst();
  if (icon !== lastIcon) {
    lastIcon = icon;
    document.getElementById("favicon").href = favicon(icon === "none" ? "unknown" : icon);
  }
}

// A timer, not an animation frame: the title must change in a background tab too.
function schedule() {
  if (!frame) frame = setTimeout(render, 50);
}

export function start() {
  store.subscribe((change) => {
    if (change.type === "reset") recount();
    else {
      if (change.old) counts.set(change.old.state, counts.get(change.old.state) - 1);
      if (change.type === "node") counts.set(change.view.state, (counts.get(change.view.state) || 0) + 1);
    }
    schedule();
  });
  // A change of theme changes the favicon's colours.
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    lastIcon = "";
    schedule();
  });
  schedule();
}
