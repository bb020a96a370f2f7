// The share page (docs/services.md, "Api: jobs"): a share link's view, followed live over
// the notifier with the share token, and by polling its JSON view when the WebSocket is
// away. Nothing is loaded from elsewhere; the map is an SVG of the driver's way.
"use strict";

const LABELS = {
  created: "Order placed",
  assigned: "A driver is assigned",
  picked_up: "On the way",
  completing: "Arriving",
  completed: "Delivered",
  cancelled: "Cancelled",
};
const ENDED = new Set(["completed", "cancelled"]);
const POLL_MS = 10000;
const token = decodeURIComponent(location.pathname.split("/").pop() || "");
const page = {
  view: null, trail: [], socket: null, poller: null, retries: 0, gone: false,
  event: null, // the newest job event heard live: a cached view older than it must not undo it
};

function $(id) { return document.getElementById(id); }

function setState(state) { document.body.dataset.state = state; }

function gone() {
  page.gone = true;
  setState("gone");
  $("status").textContent = "Delivery tracking";
  $("gone").hidden = false;
  $("where").textContent = "";
  $("updated").textContent = "";
  if (page.socket) page.socket.close();
  clearInterval(page.poller);
}

function eta(view) {
  if (view.status === "completed") return "";
  if (view.eta_seconds == null) return "";
  const minutes = Math.max(1, Math.round(view.eta_seconds / 60));
  return `Arriving in about ${minutes} min` + (view.eta_basis === "stale_position" ? " (last known position)" : "");
}

function addFix(fix) {
  if (!fix) return;
  const last = page.trail[page.trail.length - 1];
  if (last && last.ts >= fix.ts) return; // latest-value: an older fix changes nothing
  page.trail.push({ lat: fix.lat, lon: fix.lon, ts: fix.ts });
  if (page.trail.length > 500) page.trail.shift();
}

function drawMap() {
  const points = page.trail;
  if (!points.length) return;
  const lats = points.map((p) => p.lat), lons = points.map((p) => p.lon);
  const minLat = Math.min(...lats), maxLat = Math.max(...lats);
  const minLon = Math.min(...lons), maxLon = Math.max(...lons);
  // Degrees of longitude shrink with latitude: the same scale for both, in metres.
  const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
  const spanX = Math.max((maxLon - minLon) * k, 0.002), spanY = Math.max(maxLat - minLat, 0.002);
  const scale = Math.min(280 / spanX, 160 / spanY);
  const cx = (minLon + maxLon) / 2, cy = (minLat + maxLat) / 2;
  const xy = (p) => [160 + (p.lon - cx) * k * scale, 100 - (p.lat - cy) * scale];
  $("trail").setAttribute("points", points.map((p) => xy(p).map((v) => v.toFixed(1)).join(",")).join(" "));
  const [x, y] = xy(points[points.length - 1]);
  $("driver").setAttribute("cx", x.toFixed(1));
  $("driver").setAttribute("cy", y.toFixed(1));
}

function newer(view) {
  const event = page.event;
  if (!event || Date.parse(view.updated_at) >= Date.parse(event.at)) return view;
  return Object.assign({}, view, { status: event.status });
}

function render(view) {
  view = newer(view);
  page.view = view;
  document.body.dataset.status = view.status;
  $("status").textContent = LABELS[view.status] || view.status;
  $("eta").textContent = eta(view);
  if (view.driver_position) addFix(view.driver_position);
  drawMap();
  const fix = page.trail[page.trail.length - 1];
  $("where").textContent = fix && !ENDED.has(view.status)
    ? `Driver seen at ${new Date(fix.ts).toLocaleTimeString()}` : "";
  $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

async function poll() {
  if (page.gone) return null;
  try {
    const answer = await fetch(`/v1/share/${encodeURIComponent(token)}`, { cache: "no-cache" });
    if (answer.status === 404) { gone(); return null; }
    if (!answer.ok) return null;
    const view = await answer.json();
    render(view);
    return view;
  } catch (error) {
    return null; // offline for a moment: the next poll tries again
  }
}

function startPolling() {
  if (page.poller || page.gone) return;
  setState("polling");
  page.poller = setInterval(poll, POLL_MS);
}

function connect() {
  if (page.gone || (page.view && ENDED.has(page.view.status))) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws`);
  page.socket = socket;
  socket.onopen = () => {
    socket.send(JSON.stringify({ type: "auth", token }));
    // No job id: the link names its job (the view does not show the id).
    socket.send(JSON.stringify({ type: "subscribe" }));
  };
  socket.onmessage = (message) => {
    const frame = JSON.parse(message.data);
    if (frame.type === "snapshot") {
      page.retries = 0;
      clearInterval(page.poller);
      page.poller = null;
      setState("live");
      render(Object.assign({}, frame.job, frame.position ? { driver_position: frame.position } : {}));
    } else if (frame.type === "position") {
      addFix(frame);
      render(page.view);
    } else if (frame.type.startsWith("job.")) {
      // The event says the state; the view says the ETA with it (once an edge cache has
      // let go of the older one: `newer` keeps the state meanwhile).
      page.event = frame;
      render(page.view);
      poll();
    } else if (frame.type === "ping") {
      socket.send(JSON.stringify({ type: "pong" }));
    }
  };
  socket.onclose = (event) => {
    page.socket = null;
    if (page.gone) return;
    if (event.code === 4401 || event.code === 4403) {
      // Revoked or expired: the view says so with a 404, once caches let go of it.
      startPolling();
      poll();
      return;
    }
    startPolling();
    page.retries += 1;
    setTimeout(connect, Math.min(30000, 1000 * 2 ** page.retries));
  };
}

async function start() {
  const view = await poll();
  if (!view) {
    if (!page.gone) setTimeout(start, POLL_MS); // the api did not answer: ask again
    return;
  }
  connect();
}

start();
