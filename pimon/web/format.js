// Formatting of states, times, durations and metrics for people.

// Worst first: the order of the overview and of the header counts.
export const STATES = ["down", "suspect", "degraded", "unknown", "up", "left"];
const RANK = new Map(STATES.map((s, i) => [s, i]));

export function stateRank(state) {
  return RANK.get(state) ?? STATES.length;
}

// Sort key comparison: worst state first, then name.
export function compareNodes(a, b) {
  const r = stateRank(a.state) - stateRank(b.state);
  if (r !== 0) return r;
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

export function duration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

// Coarser than duration(): the text changes rarely, so visible tiles repaint rarely.
export function ago(then, now) {
  if (then == null) return "never";
  const s = now - then;
  if (s < 5) return "just now";
  if (s < 60) return `${Math.floor(s)}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 172800) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function since(then, now) {
  if (then == null) return "";
  const s = now - then;
  if (s < 60) return "for <1m";
  if (s < 3600) return `for ${Math.floor(s / 60)}m`;
  if (s < 172800) return `for ${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `for ${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

const clock = new Intl.DateTimeFormat(undefined, {
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});

export function timestamp(unix) {
  return unix == null ? "—" : clock.format(new Date(unix * 1000));
}

export function percent(value) {
  return value == null ? "—" : `${Math.round(value)}%`;
}

export function celsius(value) {
  return value == null ? "—" : `${Math.round(value)}°C`;
}

export function fraction(value) {
  if (value == null) return "—";
  const p = value * 100;
  return p >= 99.995 ? "100%" : `${p.toFixed(2)}%`;
}

export function bytes(n) {
  if (n == null) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function ms(value) {
  return value == null ? "—" : `${value.toFixed(value < 10 ? 1 : 0)} ms`;
}

export function offset(seconds) {
  if (seconds == null) return "—";
  const abs = Math.abs(seconds);
  const text = abs < 1 ? `${(seconds * 1000).toFixed(0)} ms` : `${seconds.toFixed(2)} s`;
  return seconds > 0 ? `+${text}` : text;
}

export function nodeHref(name) {
  return `/nodes/${encodeURIComponent(name)}`;
}
