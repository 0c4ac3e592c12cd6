// The live feed (GET /dashboard/live): the latest snapshot of queues and instances, and the last hour of
// each queue's enqueued and finished jobs per second. Views subscribe; EventSource reconnects by itself.
const listeners = new Set();
// gapS: two points further apart than this are a gap in the history (the gateway could not read the queues).
export const live = {snapshot: null, history: {}, connected: false, gapS: 30};

function notify() {
  for (const listener of listeners) listener(live);
}

function badge(connected) {
  live.connected = connected;
  const el = document.getElementById("live-state");
  el.textContent = connected ? "live" : "reconnecting…";
  el.className = "live " + (connected ? "on" : "off");
}

function keep(name, point) {
  const points = live.history[name] || (live.history[name] = []);
  points.push(point);
  const oldest = point[0] - 3600;
  while (points.length && points[0][0] < oldest) points.shift();
}

export function connect() {
  const source = new EventSource("/dashboard/live");
  source.addEventListener("hello", (event) => {
    const data = JSON.parse(event.data);
    live.history = data.history;
    if (data.gap_s) live.gapS = data.gap_s;
    if (data.snapshot) live.snapshot = data.snapshot;
    badge(true);
    if (live.snapshot) notify();  // else the first snapshot follows within a tick
  });
  source.addEventListener("snapshot", (event) => {
    live.snapshot = JSON.parse(event.data);
    for (const [name, point] of Object.entries(live.snapshot.rates || {})) keep(name, point);
    badge(!live.snapshot.error);
    notify();
  });
  source.addEventListener("logout", () => {
    source.close();
    window.location.assign("/dashboard/login");
  });
  source.onerror = () => badge(false);
}

export function subscribe(listener) {
  listeners.add(listener);
  if (live.snapshot) listener(live);
  return () => listeners.delete(listener);
}
