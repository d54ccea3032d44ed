// uPlot charts: colours from the page's CSS, samples to columns, the node page's four charts.

/* global uPlot */

export const KINDS = {
  cpu: { range: [0, 100], series: [["cpu_percent", "cpu %", 1]] },
  mem: {
    range: [0, 100],
    series: [
      ["mem_percent", "memory %", 1],
      ["swap_percent", "swap %", 2],
    ],
  },
  temp: { range: null, series: [["temp_c", "°C", 3]] },
  load: {
    range: null,
    series: [
      ["load1", "1 min", 1],
      ["load5", "5 min", 2],
      ["load15", "15 min", 3],
    ],
  },
};

export function palette() {
  const css = getComputedStyle(document.documentElement);
  const v = (name) => css.getPropertyValue(name).trim();
  return {
    fg: v("--muted"),
    grid: v("--grid"),
    series: ["", v("--chart-1"), v("--chart-2"), v("--chart-3")],
  };
}

// The usual distance between samples: the median, so one outage does not skew it.
function spacing(samples) {
  const gaps = [];
  for (let i = 1; i < samples.length; i += 1) gaps.push(samples[i].at - samples[i - 1].at);
  gaps.sort((a, b) => a - b);
  return gaps.length ? gaps[gaps.length >> 1] : 0;
}

// Columns for uPlot, with a null after every gap so an outage shows as a gap, not a line.
export function columns(samples, keys, step) {
  const cols = [[], ...keys.map(() => [])];
  const gap = Math.max(step || 0, spacing(samples), 1) * 3;
  let last = null;
  for (const s of samples) {
    if (last != null && s.at - last > gap) {
      cols[0].push(last + gap / 3);
      keys.forEach((_, i) => cols[i + 1].push(null));
    }
    cols[0].push(s.at);
    keys.forEach((k, i) => cols[i + 1].push(s[k] ?? null));
    last = s.at;
  }
  return cols;
}

export function hasValues(cols) {
  return cols.slice(1).some((c) => c.some((v) => v != null));
}

// Append one live point to columns (in place), dropping points older than ``keep`` seconds;
// a null goes first after a silence longer than ``gap``; points closer than ``every`` are skipped.
export function appendPoint(cols, at, values, { keep, gap = Infinity, every = 0 }) {
  const times = cols[0];
  const last = times.length ? times[times.length - 1] : null;
  if (last != null && at < last + Math.max(every, 1e-6)) return false;
  if (last != null && at - last > gap) {
    times.push(last + 1);
    values.forEach((_, i) => cols[i + 1].push(null));
  }
  times.push(at);
  values.forEach((v, i) => cols[i + 1].push(v ?? null));
  let drop = 0;
  while (drop < times.length && times[drop] < at - keep) drop += 1;
  if (drop) cols.forEach((c) => c.splice(0, drop));
  return true;
}

export function pointFrom(view, keys) {
  const m = view.metrics;
  if (!m || view.last_seen == null) return null;
  return { at: view.last_seen, values: keys.map((k) => (k === "rtt_ms" ? view.rtt_ms : m[k])) };
}

export function bigChart(el, kind, cols, xRange) {
  const spec = KINDS[kind];
  const colours = palette();
  const axis = { stroke: colours.fg, grid: { stroke: colours.grid, width: 1 }, ticks: { show: false } };
  return new uPlot(
    {
      width: Math.max(el.clientWidth, 200),
      height: 170,
      scales: {
        x: { time: true, range: xRange ? () => xRange() : undefined },
        y: spec.range ? { range: spec.range } : { range: (u, lo, hi) => [Math.min(0, lo ?? 0), Math.max(1, (hi ?? 1) * 1.1)] },
      },
      axes: [axis, { ...axis, size: 42 }],
      legend: { live: true },
      cursor: { points: { size: 6 } },
      series: [
        {},
        ...spec.series.map(([, label, c]) => ({
          label,
          stroke: colours.series[c],
          width: 1.5,
          points: { show: false },
          spanGaps: false,
        })),
      ],
    },
    cols,
    el,
  );
}

// The x axis spans the data held (at most an hour), so a young cluster still shows a trend.
export function sparkChart(el, cols) {
  const colours = palette();
  return new uPlot(
    {
      width: Math.max(el.clientWidth, 40),
      height: el.clientHeight || 28,
      padding: [2, 0, 2, 0],
      cursor: { show: false },
      legend: { show: false },
      select: { show: false },
      scales: { x: { time: true }, y: { range: [0, 100] } },
      axes: [{ show: false }, { show: false }],
      series: [{}, { stroke: colours.series[1], fill: `${colours.series[1]}33`, width: 1.25, points: { show: false } }],
    },
    cols,
    el,
  );
}
