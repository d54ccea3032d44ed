// The client's copy of the node views, fed by snapshots and the event stream.

const listeners = new Set();
const nodes = new Map();
let skew = 0; // server clock minus this browser's clock, seconds
let receivedAt = null; // this browser's clock when the monitor last told us anything

export function subscribe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function emit(change) {
  for (const fn of listeners) fn(change);
}

export function all() {
  return nodes;
}

export function get(name) {
  return nodes.get(name);
}

// Now on the monitor's clock, so "since" and "last seen" do not drift with this browser's.
export function now() {
  return Date.now() / 1000 + skew;
}

export function touch(serverNow) {
  receivedAt = Date.now() / 1000;
  if (serverNow != null) skew = serverNow - receivedAt;
}

export function staleSeconds() {
  return receivedAt == null ? null : Date.now() / 1000 - receivedAt;
}

function same(a, b) {
  return (
    a.state === b.state &&
    a.since === b.since &&
    a.seq === b.seq &&
    a.last_seen === b.last_seen &&
    a.reason === b.reason &&
    a.last_error === b.last_error &&
    a.uptime_1h === b.uptime_1h
  );
}

export function upsert(view) {
  const old = nodes.get(view.name);
  nodes.set(view.name, view);
  touch(null);
  if (!old || !same(old, view)) emit({ type: "node", view, old });
}

export function remove(name) {
  const old = nodes.get(name);
  if (!old) return;
  nodes.delete(name);
  emit({ type: "removed", name, old });
}

// Apply a full snapshot as a diff: only nodes that changed, appeared or vanished are emitted.
export function replaceAll(views, serverNow) {
  touch(serverNow);
  const seen = new Set();
  const first = nodes.size === 0;
  for (const view of views) {
    seen.add(view.name);
    if (first) nodes.set(view.name, view);
    else upsert(view);
  }
  for (const name of [...nodes.keys()]) if (!seen.has(name)) remove(name);
  if (first) emit({ type: "reset" });
}
