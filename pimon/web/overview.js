// The overview: one tile (or table row) per node, worst first, patched in place on every change.

import { ago, celsius, compareNodes, nodeHref, percent, since } from "./format.js";
import * as spark from "./spark.js";
import * as store from "./store.js";

const LAYOUT_KEY = "pimon.layout";
const TIME_FIELDS = ["since", "seen"];
const TROUBLE = new Set(["down", "suspect", "unknown"]);

function savedLayout() {
  try {
    return localStorage.getItem(LAYOUT_KEY) === "table" ? "table" : "tiles";
  } catch {
    return "tiles";
  }
}

function problemsOf(view) {
  if (view.problems?.length) return view.problems.join(", ");
  if (TROUBLE.has(view.state)) return view.reason || view.last_error || "";
  return "";
}

function haystackOf(view) {
  const m = view.metrics || {};
  return [view.name, view.address, m.model, view.reason, ...(view.problems || [])]
    .filter(Boolean)
    .join(" ")
    .toLowerCase();
}

// "state:down web" → nodes that are down and mention "web".
function parseFilter(text) {
  const words = text.toLowerCase().split(/\s+/).filter(Boolean);
  const states = words.filter((w) => w.startsWith("state:")).map((w) => w.slice(6));
  const terms = words.filter((w) => !w.startsWith("state:"));
  return (entry) =>
    (!states.length || states.includes(entry.view.state)) &&
    terms.every((t) => entry.haystack.includes(t) || entry.view.state === t);
}

export function mount(main) {
  const root = document.getElementById("overview-tpl").content.firstElementChild.cloneNode(true);
  main.append(root);
  const holder = root.querySelector("#nodes");
  const filterBox = root.querySelector("#filter");
  const shown = root.querySelector("#shown");
  const empty = root.querySelector("#empty");
  const entries = new Map();
  let order = [];
  let layout = savedLayout();
  let container = null;
  let template = null;
  let matches = () => true;
  const visible = new Set();
  const pending = new Map();
  let frame = 0;

  const observer = new IntersectionObserver(
    (records) => {
      for (const r of records) {
        const entry = r.target.pimonEntry;
        if (!entry) continue;
        if (r.isIntersecting) {
          visible.add(entry);
          fillTimes(entry, store.now());
          spark.show(entry.view.name, entry.f.spark);
        } else {
          visible.delete(entry);
          spark.hide(entry.view.name);
        }
      }
    },
    { rootMargin: "200px 0px" },
  );

  function set(entry, key, text) {
    if (entry.text[key] !== text) {
      entry.text[key] = text;
      entry.f[key].textContent = text;
    }
  }

  function fillTimes(entry, now) {
    set(entry, "since", since(entry.view.since, now));
    set(entry, "seen", ago(entry.view.last_seen, now));
  }

  function fill(entry, now) {
    const v = entry.view;
    const m = v.metrics || {};
    if (entry.el.dataset.state !== v.state) entry.el.dataset.state = v.state;
    set(entry, "state", v.state);
    set(entry, "cpu", percent(m.cpu_percent));
    set(entry, "mem", percent(m.mem_percent));
    set(entry, "disk", percent(m.disk_percent));
    set(entry, "temp", celsius(m.temp_c));
    set(entry, "problems", problemsOf(v));
    entry.haystack = haystackOf(v);
    fillTimes(entry, now);
  }

  function create(view, now) {
    const el = template.content.firstElementChild.cloneNode(true);
    const f = {};
    for (const part of el.querySelectorAll("[data-f]")) f[part.dataset.f] = part;
    const entry = { view, el, f, text: {}, haystack: "" };
    el.pimonEntry = entry;
    el.dataset.name = view.name;
    f.name.textContent = view.name;
    f.link.href = nodeHref(view.name);
    fill(entry, now);
    el.hidden = !matches(entry);
    return entry;
  }

  function updateShown() {
    let count = 0;
    for (const entry of order) if (!entry.el.hidden) count += 1;
    const text = count === order.length ? `${order.length} nodes` : `${count} of ${order.length} nodes`;
    if (shown.textContent !== text) shown.textContent = text;
    empty.hidden = order.length > 0 || store.staleSeconds() == null; // not before the first answer
  }

  // Build every tile at once: on mount, on a layout switch and on the first snapshot.
  function renderAll() {
    const started = performance.now();
    observer.disconnect();
    visible.clear();
    spark.hideAll();
    const now = store.now();
    if (layout === "table") {
      const table = document.getElementById("table-tpl").content.firstElementChild.cloneNode(true);
      container = table.querySelector(".rows");
      template = document.getElementById("row-tpl");
      holder.replaceChildren(table);
    } else {
      container = document.createElement("ul");
      container.className = "tiles";
      template = document.getElementById("tile-tpl");
      holder.replaceChildren(container);
    }
    entries.clear();
    order = [...store.all().values()].sort(compareNodes).map((view) => create(view, now));
    const fragment = document.createDocumentFragment();
    for (const entry of order) {
      entries.set(entry.view.name, entry);
      fragment.append(entry.el);
    }
    container.append(fragment);
    updateShown();
    holder.getBoundingClientRect(); // include layout in the measured render time
    const took = performance.now() - started;
    performance.measure("pimon:render", { start: started, duration: took });
    document.documentElement.dataset.renderMs = took.toFixed(1);
    document.documentElement.dataset.rendered = String(order.length);
    for (const entry of order) observer.observe(entry.el);
  }

  function position(entry) {
    let lo = 0;
    let hi = order.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (compareNodes(order[mid].view, entry.view) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  function place(entry) {
    const at = position(entry);
    const hadFocus = entry.el.contains(document.activeElement);
    const focused = document.activeElement;
    order.splice(at, 0, entry);
    container.insertBefore(entry.el, order[at + 1]?.el ?? null);
    if (hadFocus) focused.focus({ preventScroll: true });
  }

  function apply(change, now) {
    if (change.type === "removed") {
      const entry = entries.get(change.name);
      if (!entry) return;
      entries.delete(change.name);
      order.splice(order.indexOf(entry), 1);
      observer.unobserve(entry.el);
      visible.delete(entry);
      spark.forget(change.name);
      entry.el.remove();
      return;
    }
    const { view } = change;
    let entry = entries.get(view.name);
    if (!entry) {
      entry = create(view, now);
      entries.set(view.name, entry);
      place(entry);
      observer.observe(entry.el);
      return;
    }
    const moved = compareNodes(entry.view, view) !== 0; // same name: the state's rank changed
    if (moved) order.splice(order.indexOf(entry), 1);
    entry.view = view;
    fill(entry, now);
    if (moved) place(entry);
    const hide = !matches(entry);
    if (entry.el.hidden !== hide) entry.el.hidden = hide;
    spark.push(view);
  }

  function flush() {
    frame = 0;
    const now = store.now();
    for (const change of pending.values()) apply(change, now);
    pending.clear();
    updateShown();
  }

  const unsubscribe = store.subscribe((change) => {
    if (change.type === "reset") {
      pending.clear();
      renderAll();
      return;
    }
    // Coalesce bursts: at most one DOM pass per frame, one update per node.
    pending.set(change.type === "removed" ? change.name : change.view.name, change);
    if (!frame) frame = requestAnimationFrame(flush);
  });

  function applyFilter() {
    matches = parseFilter(filterBox.value);
    for (const entry of order) {
      const hide = !matches(entry);
      if (entry.el.hidden !== hide) entry.el.hidden = hide;
    }
    updateShown();
    const url = new URL(location.href);
    if (filterBox.value) url.searchParams.set("q", filterBox.value);
    else url.searchParams.delete("q");
    history.replaceState(history.state, "", url);
  }

  filterBox.value = new URLSearchParams(location.search).get("q") || "";
  matches = parseFilter(filterBox.value);
  filterBox.addEventListener("input", applyFilter);

  const buttons = root.querySelectorAll("[data-layout]");
  const pressLayout = () => {
    for (const b of buttons) b.setAttribute("aria-pressed", String(b.dataset.layout === layout));
  };
  for (const button of buttons) {
    button.addEventListener("click", () => {
      layout = button.dataset.layout;
      try {
        localStorage.setItem(LAYOUT_KEY, layout);
      } catch {
        /* storage disabled: the choice lasts this page only */
      }
      pressLayout();
      renderAll();
    });
  }
  pressLayout();

  const ticker = setInterval(() => {
    const now = store.now();
    for (const entry of visible) fillTimes(entry, now);
  }, 1000);
  let resizeTimer = 0;
  const onResize = () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(spark.resize, 200);
  };
  window.addEventListener("resize", onResize);

  renderAll();
  return () => {
    unsubscribe();
    observer.disconnect();
    cancelAnimationFrame(frame);
    clearInterval(ticker);
    clearTimeout(resizeTimer);
    window.removeEventListener("resize", onResize);
    spark.hideAll();
  };
}
