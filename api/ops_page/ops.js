// The ops page: polls GET /v1/ops/overview and GET /v1/ops/lag with the ops token it was
// opened with (`telemetry ops-url` puts it in the URL's fragment, which never reaches a
// server or a log), and draws tiles, tables and uPlot charts. Text goes in with
// textContent only: labels come from Prometheus and Kafka, not from us.
"use strict";

const POLL_MS = 5000;
const TOKEN_KEY = "telemetry-ops-token";

function takeToken() {
  const fragment = new URLSearchParams(window.location.hash.slice(1));
  const fromUrl = fragment.get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    // Out of the address bar (and of screenshots and bookmarks).
    history.replaceState(null, "", window.location.pathname);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

const token = takeToken();

async function getJson(path) {
  const response = await fetch(path, {
    headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
    cache: "no-store",
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && body.error ? body.error.message : response.statusText;
    throw new Error(`${path}: ${response.status} ${message}`);
  }
  return body;
}

function text(id, value) {
  document.getElementById(id).textContent = value;
}

function num(value, digits = 1) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  return value < 1 ? `${Math.round(value * 1000)} ms` : `${value.toFixed(1)} s`;
}

function percent(value) {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)} %`;
}

function setState(state, message) {
  const element = document.getElementById("state");
  element.dataset.state = state;
  element.textContent = message;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    td.textContent = cell;
    tr.appendChild(td);
  }
  return tr;
}

const charts = {};

function chart(id, names, series) {
  // uPlot wants columns: the x values, then one array per line.
  const first = series[0] || [];
  const data = [first.map((point) => point[0])];
  for (const line of series) data.push(line.map((point) => point[1]));
  if (charts[id]) {
    charts[id].setData(data);
    return;
  }
  const element = document.getElementById(id);
  const colors = ["#1565c0", "#2e7d32", "#c62828", "#6a1b9a"];
  charts[id] = new uPlot(
    {
      width: Math.max(element.clientWidth, 300),
      height: 180,
      series: [{}, ...names.map((label, i) => ({ label, stroke: colors[i], width: 2 }))],
      axes: [{}, { size: 60 }],
    },
    data,
    element,
  );
}

function showOverview(o) {
  const t = o.throughput;
  text("pings-accepted", num(t.pings_accepted_per_s));
  text("pings-stored", num(t.pings_stored_per_s));
  text("positions-pushed", num(t.positions_pushed_per_s));
  const f = o.freshness_s;
  text("fix-to-stored", `${seconds(f.fix_to_stored.p50)} / ${seconds(f.fix_to_stored.p99)}`);
  text("received-to-stored", seconds(f.received_to_stored.p99));
  text("fix-to-pushed", `${seconds(f.fix_to_pushed.p50)} / ${seconds(f.fix_to_pushed.p99)}`);
  const streams = o.consumer_lag["telemetry-streams"];
  text("stream-lag", streams ? `${seconds(streams.seconds)} (${num(streams.messages, 0)} msgs)` : "–");
  text("cache-hit", percent(o.cache.hit_ratio));
  text("connections", num(o.notifier.connections, 0));
  text("replica-lag", seconds(o.replica.lag_s));

  // `telemetry doctor`'s findings: the bottleneck named, its evidence, what to do.
  const findings = document.getElementById("finding-list");
  findings.replaceChildren();
  for (const f of o.findings) {
    const li = document.createElement("li");
    li.dataset.severity = f.severity;
    const evidence = Object.entries(f.evidence).map(([k, v]) => `${k} ${v}`).join(", ");
    li.textContent = `${f.severity}: ${f.summary} (${evidence}). ${f.advice}`;
    findings.appendChild(li);
  }
  if (!o.findings.length) {
    const li = document.createElement("li");
    li.textContent = "no known bottleneck";
    findings.appendChild(li);
  }

  // Alertmanager's alerts (firing, silenced, inhibited), each with its runbook; while it
  // is away, Prometheus's firing alerts, and the page says so.
  const alerts = document.getElementById("alert-list");
  alerts.replaceChildren();
  if (!o.alertmanager.up) {
    const li = document.createElement("li");
    li.dataset.severity = "critical";
    li.textContent = "Alertmanager does not answer: alerts from Prometheus, sent to no one";
    alerts.appendChild(li);
  }
  for (const alert of o.alerts) {
    const li = document.createElement("li");
    li.dataset.severity = alert.severity;
    li.dataset.state = alert.state;
    li.textContent = `${alert.severity}: ${alert.name} (${alert.state}): ${alert.summary} `;
    if (alert.runbook_url) {
      const a = document.createElement("a");
      a.href = alert.runbook_url;
      a.textContent = "runbook";
      li.appendChild(a);
    }
    alerts.appendChild(li);
  }
  if (!o.alerts.length) {
    const li = document.createElement("li");
    li.textContent = "none firing";
    alerts.appendChild(li);
  }
  const silences = document.getElementById("silence-list");
  silences.replaceChildren();
  for (const s of o.silences) {
    const li = document.createElement("li");
    li.dataset.state = s.state;
    li.textContent = `${s.matchers.join(", ")} until ${s.ends_at} by ${s.created_by}: ${s.comment} (${s.state})`;
    silences.appendChild(li);
  }
  if (!o.silences.length) {
    const li = document.createElement("li");
    li.textContent = "none";
    silences.appendChild(li);
  }

  const services = document.querySelector("#services-table tbody");
  services.replaceChildren();
  for (const [name, s] of Object.entries(o.services)) {
    services.appendChild(
      row([name, `${s.processes_up} / ${s.processes}`, num(s.requests_per_s), num(s.errors_per_s, 2), percent(s.error_ratio)]),
    );
  }

  const s = o.series;
  chart("chart-throughput", ["accepted", "stored"], [s.pings_accepted_per_s, s.pings_stored_per_s]);
  chart("chart-freshness", ["fix → stored", "fix → pushed"], [s.fix_to_stored_p99_s, s.fix_to_pushed_p99_s]);
  chart("chart-lag", ["worst partition"], [s.consumer_lag_s]);
  chart("chart-errors", ["5xx ratio"], [s.error_ratio]);
}

function showLag(lag) {
  const body = document.querySelector("#lag-table tbody");
  body.replaceChildren();
  for (const p of lag.partitions) {
    const tr = row([p.group, p.topic, p.partition, p.end_offset, p.committed_offset ?? "–", p.lag_messages, p.lag_seconds]);
    const status = document.createElement("td");
    status.className = "status";
    status.dataset.status = p.status;
    status.textContent = p.status;
    tr.appendChild(status);
    body.appendChild(tr);
  }
}

async function poll() {
  if (!token) {
    setState("error", "no ops token: open this page with the URL `telemetry ops-url` prints");
    return;
  }
  const [overview, lag] = await Promise.allSettled([getJson("/v1/ops/overview"), getJson("/v1/ops/lag")]);
  const failures = [overview, lag].filter((r) => r.status === "rejected").map((r) => r.reason.message);
  if (overview.status === "fulfilled") showOverview(overview.value);
  if (lag.status === "fulfilled") showLag(lag.value);
  if (failures.length) {
    setState("error", failures.join("; "));
  } else {
    setState("ok", "live");
  }
  text("updated", `updated ${new Date().toLocaleTimeString()}`);
  document.body.dataset.loaded = "true";
  setTimeout(poll, POLL_MS);
}

poll();
