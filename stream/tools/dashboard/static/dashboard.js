// riskstream dashboard: the page. Everything that comes from events (user ids, reasons, bands) is
// put into the DOM as text (textContent), never as HTML.
"use strict";

const COLORS = ["#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
const rates = { t: [], inp: [], applied: [] };
const charts = {};
let alertKeys = "";
let drillUser = null;

function $(id) { return document.getElementById(id); }
function text(id, v) { $(id).textContent = v; }
function fmt(n, digits) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 1 : digits });
}
function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 120) return fmt(s, 0) + " s";
  if (s < 7200) return fmt(s / 60, 0) + " min";
  if (s < 172800) return fmt(s / 3600, 1) + " h";
  return fmt(s / 86400, 1) + " d";
}
function cell(tr, value, cls) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "–" : String(value);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}
function width(el) { return Math.max(300, el.clientWidth - 10); }

function chart(id, series, data, extra) {
  const el = $(id);
  if (charts[id]) charts[id].destroy();
  const opts = Object.assign({ width: width(el), height: 220, series: series,
                               legend: { show: true }, scales: { x: { time: true } } }, extra || {});
  charts[id] = new uPlot(opts, data, el);
  return charts[id];
}

function updateRates(s) {
  const w = s.workers;
  rates.t.push(s.now); rates.inp.push(w.events_in_per_s); rates.applied.push(w.events_applied_per_s);
  if (rates.t.length > 300) { rates.t.shift(); rates.inp.shift(); rates.applied.shift(); }
  const data = [rates.t, rates.inp, rates.applied];
  if (!charts["chart-rates"]) {
    chart("chart-rates", [{}, { label: "in", stroke: COLORS[0], width: 2 },
                          { label: "applied", stroke: COLORS[3], width: 2 }], data);
  } else {
    charts["chart-rates"].setData(data);
  }
}

function updateAlerts(s) {
  const ser = s.alerts_series;
  const keys = Object.keys(ser.counts);
  const data = [ser.t].concat(keys.map(k => ser.counts[k]));
  if (keys.join("|") !== alertKeys || !charts["chart-alerts"]) {
    alertKeys = keys.join("|");
    const series = [{}].concat(keys.map((k, i) => ({ label: k, stroke: COLORS[i % COLORS.length], width: 2,
                                                     points: { show: true } })));
    chart("chart-alerts", series, data);
  } else {
    charts["chart-alerts"].setData(data);
  }
  const body = $("alerts-now").tBodies[0];
  body.replaceChildren();
  for (const [k, n] of Object.entries(s.alerts_per_min)) {
    const tr = document.createElement("tr"); cell(tr, k); cell(tr, n); body.appendChild(tr);
  }
}

function updateTables(s) {
  const dist = $("distribution").tBodies[0];
  dist.replaceChildren();
  for (const [band, c] of Object.entries(s.distribution)) {
    const tr = document.createElement("tr");
    tr.className = "band";
    cell(tr, band); cell(tr, c.elevated, "level-elevated"); cell(tr, c.high, "level-high");
    dist.appendChild(tr);
  }
  const top = $("top-users").tBodies[0];
  top.replaceChildren();
  for (const u of s.top) {
    const tr = document.createElement("tr");
    tr.className = "user-row";
    const td = document.createElement("td");
    const b = document.createElement("button");
    b.type = "button"; b.className = "user"; b.textContent = u.user_id;
    b.addEventListener("click", () => drill(u.user_id));
    td.appendChild(b); tr.appendChild(td);
    cell(tr, u.score === null ? null : fmt(u.score, 3));
    cell(tr, u.level, u.level ? "level-" + u.level : "");
    cell(tr, u.age_band);
    cell(tr, u.kinds.join(", "));
    cell(tr, u.reasons.join("; "), "reasons");
    top.appendChild(tr);
  }
}

function render(s) {
  const w = s.workers;
  text("ns", s.namespace || "(none)");
  text("source", s.levels_source);
  text("workers-up", w.workers_up);
  text("c-events-in", fmt(w.events_in_per_s));
  text("c-events-applied", fmt(w.events_applied_per_s));
  text("c-applied-total", fmt(w.events_applied_total, 0));
  text("c-lag", fmt(s.consumer_lag, 0));
  text("c-wm-lag", duration(w.watermark_lag_s));
  text("c-active", fmt(s.active_users, 0));
  text("active-window", fmt(s.active_window_s / 60, 0));
  text("c-users-levels", fmt(s.users_with_levels, 0));
  text("c-alerts-min", fmt(Object.values(s.alerts_per_min).reduce((a, b) => a + b, 0), 0));
  const errs = Object.entries(w.errors).map(([a, e]) => a + ": " + e);
  if (s.kafka_error) errs.push(s.kafka_error);
  $("errors").hidden = errs.length === 0;
  text("errors", errs.join(" · "));
  updateRates(s);
  updateAlerts(s);
  updateTables(s);
}

async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin" });
  if (!r.ok) throw new Error(url + ": " + r.status);
  return r.json();
}

async function drill(uid) {
  drillUser = uid;
  $("drill").hidden = false;
  text("drill-user", uid);
  text("drill-summary", "loading…");
  const path = encodeURIComponent(uid);
  let report = null, hist = { alerts: [], scores: [] };
  try { report = await getJSON("/api/users/" + path); } catch (e) { text("drill-summary", String(e)); }
  try { hist = await getJSON("/api/history/" + path); } catch (e) { /* shown as no alerts */ }
  if (drillUser !== uid) return;
  if (report) {
    const f = report.features;
    text("drill-summary",
      "age band " + (report.age_band || "unknown") + " · rule profile " + report.profile +
      " · last event " + report.last_event_time + " · history " + report.history_days + " day(s)\n" +
      "today " + fmt(report.today_active_min, 0) + " active min · current session " + fmt(report.session_min, 0) +
      " min · score now " + (report.score === null ? "not scored" : fmt(report.score, 3)) +
      " · ml level " + report.policy.ml_level + "\n7 days: " + fmt(f.active_min_day_7d) + " min/day, " +
      fmt(f.sessions_day_7d) + " sessions/day, night share " + fmt(f.night_share_7d, 3));
    const days = report.timeline;
    const xs = days.map(d => Date.parse(d.day + "T00:00:00Z") / 1000);
    const bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.6, 40] }) : undefined;
    chart("chart-days", [{}, { label: "active min", stroke: COLORS[0], fill: "#1f77b433", paths: bars, scale: "min" },
                         { label: "night min", stroke: COLORS[4], width: 2, scale: "min", points: { show: true } },
                         { label: "sessions", stroke: COLORS[2], width: 2, scale: "n", points: { show: true } }],
          [xs, days.map(d => d.active_min), days.map(d => d.night_min), days.map(d => d.sessions)],
          { axes: [{}, { scale: "min", label: "minutes" }, { scale: "n", side: 1, label: "sessions", grid: { show: false } }] });
  }
  const pts = hist.scores.slice();
  if (report && report.score !== null) pts.push({ t: report.tick_end_ms / 1000, score: report.score });
  pts.sort((a, b) => a.t - b.t);
  const alertAt = new Map(hist.alerts.filter(a => a.event_time && a.score !== null)
                              .map(a => [Date.parse(a.event_time) / 1000, a.score]));
  const xs = pts.map(p => p.t);
  chart("chart-score", [{}, { label: "score", stroke: COLORS[1], width: 2 },
                        { label: "alert", stroke: COLORS[0], width: 0, points: { show: true, size: 9 } }],
        [xs, pts.map(p => p.score), xs.map(t => alertAt.has(t) ? alertAt.get(t) : null)],
        { scales: { x: { time: true }, y: { range: [0, 1] } } });
  const body = $("drill-alerts").tBodies[0];
  body.replaceChildren();
  for (const a of hist.alerts.slice().reverse()) {
    const tr = document.createElement("tr");
    cell(tr, a.event_time); cell(tr, a.kind); cell(tr, a.level, "level-" + a.level);
    cell(tr, a.score === null ? null : fmt(a.score, 3)); cell(tr, a.reasons.join("; "), "reasons");
    body.appendChild(tr);
  }
}

function connect() {
  const es = new EventSource("/api/stream");
  es.onopen = () => { text("conn", "live"); $("conn").className = "conn live"; };
  es.onmessage = (m) => render(JSON.parse(m.data));
  es.onerror = () => { text("conn", "reconnecting…"); $("conn").className = "conn down"; };
}

window.addEventListener("DOMContentLoaded", () => {
  $("drill-close").addEventListener("click", () => { $("drill").hidden = true; drillUser = null; });
  connect();
});
