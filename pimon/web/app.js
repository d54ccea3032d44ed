// Entry point: client-side routing between the overview and a node's page, and the live feed.

import * as live from "./live.js";
import * as nodepage from "./nodepage.js";
import * as overview from "./overview.js";
import * as spark from "./spark.js";
import * as summary from "./summary.js";

const NODE_PATH = /^\/nodes\/([^/]+)\/?$/;
let unmount = null;

function route() {
  unmount?.();
  const main = document.getElementById("main");
  main.replaceChildren();
  const match = location.pathname.match(NODE_PATH);
  unmount = match ? nodepage.mount(main, decodeURIComponent(match[1])) : overview.mount(main);
}

function ours(url) {
  return url.origin === location.origin && (url.pathname === "/" || NODE_PATH.test(url.pathname));
}

function navigate(url) {
  // Remember where the reader was, so Back returns to the same place in a long list.
  history.replaceState({ scroll: window.scrollY }, "");
  history.pushState({ scroll: 0 }, "", url);
  route();
  window.scrollTo(0, 0);
  document.getElementById("main").focus({ preventScroll: true });
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href]");
  if (!link || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey || link.target) return;
  const url = new URL(link.href);
  if (!ours(url)) return;
  event.preventDefault();
  navigate(url);
});

window.addEventListener("popstate", (event) => {
  route();
  window.scrollTo(0, event.state?.scroll ?? 0);
});

// Charts paint with canvas colours read from CSS: redraw them when the theme flips.
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
  spark.hideAll();
  route();
});

summary.start();
live.start();
route();
