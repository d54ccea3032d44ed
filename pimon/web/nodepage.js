// One node's page: charts over 1 h / 24 h / 7 d, uptime, metadata and the transition timeline.

import { api } from "./api.js";
import { KINDS, appendPoint, bigChart, columns, hasValues, pointFrom } from "./charts.js";
import * as fmt from "./format.js";
import { onTransition } from "./live.js";
import * as store from "./store.js";

const WINDOWS = {
  "1h": { seconds: 3600, step: null },
  "24h": { seconds: 86400, step: "2m" },
  "7d": { seconds: 604800, step: "15m" },
};
const OUTAGE = new Set(["down", "suspect"]);
const HISTORY_PAGE = 100;

function metaRows(v) {
  const m = v.metrics || {};
  const disks = m.disks ? Object.entries(m.disks).map(([k, p]) => `${k} ${fmt.percent(p)}`) : [];
  return [
    ["Model", m.model || "—"],
    ["Address", v.address || "—"],
    ["Node id", v.id || "—"],
    ["Mode", `${v.mode || "—"} (${v.source || "—"})`],
    ["Heartbeat interval", v.interval == null ? "—" : `${v.interval} s`],
    ["Clock offset", fmt.offset(v.clock_offset_s)],
    ["Round trip", fmt.ms(v.rtt_ms)],
    ["Phi", v.phi == null ? "—" : v.phi.toFixed(2)],
    ["Memory", fmt.bytes(m.mem_total_bytes)],
    ["Disks", disks.length ? disks.join(", ") : fmt.percent(m.disk_percent)],
    ["Throttled", m.throttled?.length ? m.throttled.join(", ") : "no"],
    ["Booted", m.uptime_s == null ? "—" : `${fmt.duration(m.uptime_s)} ago`],
    ["Heartbeat seq", v.seq == null ? "—" : String(v.seq)],
    ["Last error", v.last_error || "none"],
  ];
}

// Newest first, each change once, whether it came from the store, the view or the stream.
function merged(...lists) {
  const seen = new Map();
  for (const t of lists.flat()) seen.set(`${t.at}|${t.old}|${t.new}`, t);
  return [...seen.values()].sort((a, b) => b.at - a.at);
}

export function mount(main, name) {
  const root = document.getElementById("node-tpl").content.firstElementChild.cloneNode(true);
  const f = {};
  for (const part of root.querySelectorAll("[data-f]")) f[part.dataset.f] = part;
  main.append(root);
  const charts = new Map();
  let view = store.get(name) || null;
  let windowName = "1h";
  let transitions = [];
  let next = null;
  let metaText = "";
  let timelineError = "";
  let generation = 0;
  let live = true;

  function fillView() {
    if (!view) return;
    f.name.textContent = view.name;
    f.state.textContent = view.state;
    f.state.dataset.state = view.state;
    root.dataset.state = view.state;
    f.reason.textContent = view.reason || "";
    f.problems.textContent = view.problems?.length ? `Problems: ${view.problems.join(", ")}` : "";
    f.problems.hidden = !view.problems?.length;
    f.up1h.textContent = fmt.fraction(view.uptime_1h);
    f.up24h.textContent = fmt.fraction(view.uptime_24h);
    f.up7d.textContent = fmt.fraction(view.uptime_7d);
    f.up30d.textContent = fmt.fraction(view.uptime_30d);
    const rows = metaRows(view);
    const text = JSON.stringify(rows);
    if (text !== metaText) {
      metaText = text;
      f.meta.replaceChildren(
        ...rows.map(([k, v]) => {
          const div = document.createElement("div");
          const dt = document.createElement("dt");
          const dd = document.createElement("dd");
          dt.textContent = k;
          dd.textContent = v;
          div.append(dt, dd);
          return div;
        }),
      );
    }
    tick();
  }

  function tick() {
    if (!view) return;
    const now = store.now();
    f.since.textContent = `${view.state} ${fmt.since(view.since, now)}`;
    f.seen.textContent = `seen ${fmt.ago(view.last_seen, now)}`;
    const ongoing = f.timeline.querySelector("[data-ongoing] .lasted");
    if (ongoing && transitions.length) {
      ongoing.textContent = `${transitions[0].new} for ${fmt.duration(now - transitions[0].at)} so far`;
    }
  }

  function renderTimeline() {
    const items = transitions.map((t, i) => {
      const li = document.createElement("li");
      li.dataset.state = t.new;
      const time = document.createElement("time");
      time.dateTime = new Date(t.at * 1000).toISOString();
      time.textContent = fmt.timestamp(t.at);
      const change = document.createElement("span");
      change.className = "change";
      const from = document.createElement("span");
      from.className = "state";
      from.dataset.state = t.old;
      from.textContent = t.old;
      const to = document.createElement("span");
      to.className = "state";
      to.dataset.state = t.new;
      to.textContent = t.new;
      change.append(from, " → ", to);
      const reason = document.createElement("span");
      reason.className = "reason";
      reason.textContent = t.reason || "";
      const lasted = document.createElement("span");
      lasted.className = OUTAGE.has(t.new) ? "lasted outage" : "lasted";
      if (i === 0) li.dataset.ongoing = "";
      else lasted.textContent = `${t.new} for ${fmt.duration(transitions[i - 1].at - t.at)}`;
      li.append(time, change, reason, lasted);
      return li;
    });
    f.timeline.replaceChildren(...items);
    const note = timelineError || (transitions.length ? "" : "No transitions recorded yet.");
    f.timelinenote.textContent = note;
    f.timelinenote.hidden = !note;
    f.older.hidden = next == null;
    tick();
  }

  async function loadHistory(before) {
    const query = new URLSearchParams({ node: name, limit: String(HISTORY_PAGE) });
    if (before != null) query.set("before", String(before));
    try {
      const answer = await api(`/v1/history?${query}`);
      if (!live) return;
      transitions = before == null ? answer.transitions : [...transitions, ...answer.transitions];
      next = answer.next;
      // Writes are batched: the newest changes may be in memory only, in the node view.
      if (before == null) transitions = merged(view?.transitions || [], transitions);
    } catch (e) {
      if (!live) return;
      // No stored history: the node view's recent transitions still tell the story.
      transitions = view?.transitions || transitions;
      next = null;
      timelineError = `Stored history unavailable (${e.message}); showing recent transitions only.`;
    }
    renderTimeline();
  }

  function xRange() {
    const now = store.now();
    return [now - WINDOWS[windowName].seconds, now];
  }

  function showChart(kind, cols) {
    const figure = root.querySelector(`[data-chart="${kind}"]`);
    const box = figure.querySelector(".plot");
    const old = charts.get(kind);
    old?.plot.destroy();
    const plot = bigChart(box, kind, cols, xRange);
    charts.set(kind, { plot, cols, figure, box });
    markPoints(figure, cols);
  }

  function markPoints(figure, cols) {
    figure.dataset.points = String(cols[0].length);
    figure.classList.toggle("nodata", !hasValues(cols));
  }

  async function loadCharts() {
    const mine = ++generation;
    const w = WINDOWS[windowName];
    const query = new URLSearchParams({ since: String(Math.round(store.now() - w.seconds)) });
    if (w.step) query.set("step", w.step);
    let samples = [];
    let step = null;
    try {
      const answer = await api(`/v1/nodes/${encodeURIComponent(name)}/samples?${query}`);
      samples = answer.samples;
      step = answer.step;
      f.chartnote.hidden = true;
    } catch (e) {
      f.chartnote.textContent = `Metric history unavailable (${e.message}); charts show live data only.`;
      f.chartnote.hidden = false;
    }
    if (mine !== generation || !live) return;
    for (const [kind, spec] of Object.entries(KINDS)) {
      showChart(kind, columns(samples, spec.series.map(([key]) => key), step));
    }
  }

  function appendLive() {
    if (windowName !== "1h" || !view) return;
    for (const [kind, chart] of charts) {
      const point = pointFrom(view, KINDS[kind].series.map(([key]) => key));
      const pace = { keep: WINDOWS["1h"].seconds, gap: 30 };
      if (point && appendPoint(chart.cols, point.at, point.values, pace)) {
        chart.plot.setData(chart.cols);
        markPoints(chart.figure, chart.cols);
      }
    }
  }

  const buttons = root.querySelectorAll("[data-window]");
  for (const button of buttons) {
    button.addEventListener("click", () => {
      windowName = button.dataset.window;
      for (const b of buttons) b.setAttribute("aria-pressed", String(b === button));
      loadCharts();
    });
  }
  f.older.addEventListener("click", () => loadHistory(next));

  const unsubscribe = store.subscribe((change) => {
    if (change.type === "reset" || change.view?.name === name) {
      const fresh = store.get(name);
      if (!fresh) return;
      view = { ...fresh, transitions: view?.transitions };
      fillView();
      appendLive();
    }
  });
  const unTransition = onTransition((t) => {
    if (t.node !== name) return;
    transitions = merged([t], transitions);
    renderTimeline();
  });
  const ticker = setInterval(tick, 1000);
  let resizeTimer = 0;
  const onResize = () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const { plot, box } of charts.values()) {
        plot.setSize({ width: Math.max(box.clientWidth, 200), height: 170 });
      }
    }, 200);
  };
  window.addEventListener("resize", onResize);

  f.name.textContent = name;
  fillView();
  api(`/v1/nodes/${encodeURIComponent(name)}`)
    .then((fresh) => {
      if (!live) return;
      view = fresh;
      fillView();
      return loadHistory(null);
    })
    .catch((e) => {
      if (!live) return;
      const p = document.createElement("p");
      p.className = "note";
      p.textContent = e.status === 404 ? `There is no node named “${name}”.` : `Cannot load ${name}: ${e.message}`;
      root.replaceChildren(root.firstElementChild, p);
    });
  loadCharts();

  return () => {
    live = false;
    unsubscribe();
    unTransition();
    clearInterval(ticker);
    clearTimeout(resizeTimer);
    window.removeEventListener("resize", onResize);
    for (const { plot } of charts.values()) plot.destroy();
    charts.clear();
  };
}
