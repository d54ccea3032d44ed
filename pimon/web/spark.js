// Last-hour cpu sparklines, drawn only for nodes on screen and fed by live node views.

import { api } from "./api.js";
import { appendPoint, columns, pointFrom, sparkChart } from "./charts.js";

const HOUR = 3600;
const KEYS = ["cpu_percent"];
const PARALLEL_FETCHES = 4;
const REDRAW_EVERY_MS = 5000;
// Live points at the monitor's sampling pace, so they look like the stored minutes around them.
const LIVE = { keep: HOUR, gap: 180, every: 10 };

const data = new Map(); // name -> columns, kept after the tile scrolls away
const plots = new Map(); // name -> { plot, el }
const dirty = new Set();
const queue = [];
let fetching = 0;
let timer = null;

function pump() {
  while (fetching < PARALLEL_FETCHES && queue.length) {
    const name = queue.shift();
    fetching += 1;
    load(name).finally(() => {
      fetching -= 1;
      pump();
    });
  }
}

async function load(name) {
  let cols = [[], []];
  try {
    const answer = await api(`/v1/nodes/${encodeURIComponent(name)}/samples?since=1h&step=60`);
    cols = columns(answer.samples, KEYS, answer.step);
  } catch {
    /* no history (yet): the sparkline grows from live views */
  }
  const live = data.get(name);
  if (live) {
    // Points that arrived while the request was in flight are newer than the history.
    const lastAt = cols[0].length ? cols[0][cols[0].length - 1] : -Infinity;
    live[0].forEach((at, i) => at > lastAt && appendPoint(cols, at, [live[1][i]], LIVE));
  }
  data.set(name, cols);
  draw(name);
}

function draw(name) {
  const entry = plots.get(name);
  const cols = data.get(name);
  if (!entry || !cols) return;
  if (entry.plot) entry.plot.setData(cols);
  else entry.plot = sparkChart(entry.el, cols);
  entry.el.dataset.points = String(cols[0].length);
}

// Draw the sparkline of ``name`` into ``el`` (now on screen); fetch its hour on first sight.
export function show(name, el) {
  if (plots.has(name) || el.clientWidth === 0) return;
  plots.set(name, { plot: null, el });
  if (data.has(name)) draw(name);
  else {
    data.set(name, [[], []]);
    queue.push(name);
    pump();
  }
  if (!timer) timer = setInterval(redraw, REDRAW_EVERY_MS);
}

export function hide(name) {
  const entry = plots.get(name);
  if (!entry) return;
  entry.plot?.destroy();
  plots.delete(name);
}

export function hideAll() {
  for (const name of [...plots.keys()]) hide(name);
  for (const name of queue) data.delete(name); // never fetched: fetch on next sight
  queue.length = 0;
  clearInterval(timer);
  timer = null;
}

export function forget(name) {
  hide(name);
  data.delete(name);
}

// Add a live view's cpu to the sparkline, if that node has been on screen.
export function push(view) {
  const cols = data.get(view.name);
  const point = cols && pointFrom(view, KEYS);
  if (point && appendPoint(cols, point.at, point.values, LIVE)) dirty.add(view.name);
}

function redraw() {
  for (const name of dirty) if (plots.get(name)?.plot) draw(name);
  dirty.clear();
}

export function resize() {
  for (const { plot, el } of plots.values()) {
    if (plot && el.clientWidth) plot.setSize({ width: el.clientWidth, height: el.clientHeight || 28 });
  }
}
