// Turnout's dashboard: one server-sent-events stream (/events) keeps `state` current; render() draws it.
// Everything shown is built with textContent (no HTML from the daemon is ever parsed). The page states
// what it shows in data-* attributes too, so tests read it from the DOM.
"use strict";

const WINDOW_SECONDS = 300;
const COLOURS = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#bcbd22"];
const state = { services: {}, series: [], markers: [], deployments: {}, history: {}, certificates: null, offset: 0, interval: 1 };
const colours = {};
const body = document.body;
const actions = body.dataset.actions === "true";
const csrf = document.querySelector('meta[name="turnout-csrf"]').content;
let selected = decodeURIComponent(location.hash.slice(1));
let dirty = false;
let chartsDirty = true;  // the charts change with samples, markers and the selection only
let ticks = 0;

// ------------------------------------------------------------------ the stream
function connect() {
  const source = new EventSource("/events");
  source.onopen = () => setConnection("open");
  source.onerror = () => setConnection(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  for (const kind of ["snapshot", "table", "tick", "deploy", "history"]) {
    source.addEventListener(kind, (message) => {
      apply(kind, JSON.parse(message.data));
      body.dataset.lastEvent = message.lastEventId;
      schedule();
    });
  }
}

function setConnection(value) {
  body.dataset.connection = value;
  document.getElementById("connection").textContent = value;
}

function apply(kind, data) {
  if (data.t) state.offset = data.t * 1000 - Date.now();
  if (kind !== "table" && kind !== "history") chartsDirty = true;
  if (kind === "snapshot") {
    Object.assign(state, { services: data.services, series: data.series, markers: data.markers,
                           deployments: data.deployments, history: data.history, interval: data.interval,
                           certificates: data.certificates });
  } else if (kind === "table") {
    state.services = data.services;
  } else if (kind === "tick") {
    state.services = data.services;
    state.certificates = data.certificates;
    state.series.push({ t: data.t, rates: data.rates });
    while (state.series.length && state.series[0].t < data.t - WINDOW_SECONDS) state.series.shift();
    for (const [name, info] of Object.entries(data.deployments)) {
      const known = state.deployments[name];
      state.deployments[name] = known && known.id === info.id ? Object.assign(known, info, { events: known.events })
                                                              : { ...info, events: [] };
    }
    ticks += 1;
    body.dataset.ticks = String(ticks);
  } else if (kind === "deploy") {
    let deployment = state.deployments[data.service];
    if (!deployment || deployment.id !== data.deployment.id) {
      deployment = state.deployments[data.service] = { ...data.deployment, status: "running", events: [] };
    }
    if (!deployment.events.some((e) => e.time === data.event.time && e.event === data.event.event
                                      && e.step === data.event.step)) deployment.events.push(data.event);
    if (data.event.event === "finished") {
      Object.assign(deployment, { status: data.event.status, message: data.event.message, step_ends_at: null });
    }
    if (data.event.event === "step" || data.event.event === "finished") {
      state.markers.push({ service: data.service, t: data.event.time, deployment: data.deployment.id,
                           label: data.event.step || data.event.status });
    }
  } else if (kind === "history") {
    state.history[data.service] = data.deployments;
  }
}

function schedule() {
  if (!dirty) {
    dirty = true;
    requestAnimationFrame(() => { dirty = false; render(); });
  }
}

// ------------------------------------------------------------------ helpers
function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key === "class") element.className = value;
    else element.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function colourOf(pool) {
  if (!(pool in colours)) colours[pool] = COLOURS[Object.keys(colours).length % COLOURS.length];
  return colours[pool];
}

const pct = (x) => (x === null || x === undefined ? "–" : `${Math.round(x * 1000) / 10}%`);
const num = (x) => (x === null || x === undefined ? "–" : x >= 100 ? x.toFixed(0) : x.toFixed(1));
const ms = (s) => (s === null || s === undefined ? "–" : `≤ ${Math.round(s * 10000) / 10} ms`);
const clock = (t) => new Date(t * 1000).toLocaleTimeString();

function latestRates(service) {
  const last = state.series[state.series.length - 1];
  return (last && last.rates[service]) || {};
}

// ------------------------------------------------------------------ render
function render() {
  const started = performance.now();
  const names = Object.keys(state.services).sort();
  if (!state.services[selected]) {
    selected = names.find((n) => state.deployments[n] && state.deployments[n].status === "running") || names[0] || "";
  }
  renderOverview(names);
  renderDetail();
  renderCertificates(state.certificates);
  document.getElementById("summary").textContent =
    `${names.length} service${names.length === 1 ? "" : "s"} · ${Object.values(state.deployments).filter((d) => d.status === "running").length} deploying`;
  body.dataset.renderMs = (performance.now() - started).toFixed(1);
}

function renderOverview(names) {
  const rows = names.map((name) => {
    const service = state.services[name];
    const rates = latestRates(name);
    const deployment = state.deployments[name];
    const running = deployment && deployment.status === "running";
    const upstreams = service.pools.flatMap((p) => p.upstreams);
    const healthy = upstreams.filter((u) => u.eligible).length;
    const rps = Object.values(rates).reduce((sum, r) => sum + r.rps, 0);
    return h("tr", { "data-service": name, "data-stable": service.stable || "", "data-deploying": running,
                     class: name === selected ? "selected" : "", onclick: () => { location.hash = name; } },
      h("td", null, h("b", null, name), service.hosts.length ? h("div", { class: "seen" }, service.hosts.join(", ")) : null),
      h("td", null, service.stable || (service.managed ? "not deployed" : "static")),
      h("td", null, service.pools.map((p) => poolChip(p, rates[p.name]))),
      h("td", null, h("span", { class: `badge ${healthy === upstreams.length ? "ok" : "bad"}` },
                       `${healthy}/${upstreams.length} healthy`),
        service.draining.length ? h("span", { class: "badge warn" }, ` ${service.draining.length} draining`) : null),
      h("td", { class: "num" }, num(rps)),
      h("td", null, running ? h("span", { class: "badge warn" }, `deploying ${deployment.version}${deployment.paused ? " (paused)" : ""}`) : null));
  });
  document.querySelector("#services tbody").replaceChildren(...rows);
}

function poolChip(pool, rates) {
  const share = rates ? rates.share : null;
  return h("span", { class: "pool", "data-pool": pool.name, "data-weight": pool.weight,
                     "data-share": share === null || share === undefined ? "" : Math.round(share * 1000) / 10 },
    h("span", { class: "dot", style: `background:${colourOf(pool.name)}` }), `${pool.name} `, h("b", null, `${pool.weight}%`),
    h("span", { class: "seen" }, ` · ${pct(share)} seen`));
}

function renderDetail() {
  const detail = document.getElementById("detail");
  const service = state.services[selected];
  detail.hidden = !service;
  if (!service) return;
  detail.dataset.service = selected;
  document.getElementById("detail-title").textContent =
    `${selected} — ${service.stable ? `serving ${service.stable}` : service.managed ? "not deployed" : "static upstreams"}` +
    (service.strategy ? ` · ${service.strategy}` : "") + (service.state !== "active" ? ` · ${service.state}` : "");
  renderDeploy(selected, service);
  if (chartsDirty || detail.dataset.charted !== selected) {
    chartsDirty = false;
    detail.dataset.charted = selected;
    renderCharts(selected);
  }
  renderPools(service);
  renderHistory(state.history[selected] || []);
}

function renderDeploy(name, service) {
  const box = document.getElementById("deploy");
  const deployment = state.deployments[name];
  if (!deployment) {
    box.replaceChildren(actions && service.previous ? actionBar(name, ["rollback"]) : "");
    box.removeAttribute("data-deployment");
    return;
  }
  const running = deployment.status === "running";
  box.dataset.deployment = deployment.id;
  box.dataset.status = deployment.status;
  const events = deployment.events || [];
  const steps = events.filter((e) => e.event === "step");
  const plan = events.filter((e) => e.event === "plan").pop();
  const weights = steps.filter((e) => e.step === "weight" || e.step === "switched").map((e) => Object.values(e.weights).pop());  // the new pool comes last
  const analysis = events.filter((e) => e.event === "analysis").pop();
  const children = [h("div", null, h("b", null, running ? `Deploying ${deployment.version}` : `Last deploy: ${deployment.version}`),
                      ` with ${deployment.strategy} (${deployment.id}) `,
                      h("span", { id: "deploy-status", class: `badge ${deployment.status === "succeeded" ? "ok" : running ? "warn" : "bad"}` },
                        deployment.paused && running ? "paused" : deployment.status),
                      deployment.message ? h("div", { class: "seen" }, deployment.message) : null)];
  if (plan) {
    const reached = weights.length ? weights[weights.length - 1] : 0;
    children.push(h("div", { class: "plan", id: "plan" }, "weights: ",
      plan.steps.map((w) => h("span", { "data-weight": w, class: w < reached || (w === reached && !running) ? "done" : w === reached ? "current" : "" }, `${w}%`))));
  }
  if (running) {
    children.push(h("div", null, h("span", { id: "countdown", "data-seconds": deployment.step_ends_at ? "" : "none" }),
                    analysis ? h("span", { id: "verdict", "data-verdict": analysis.verdict }, ` · analysis: ${describeVerdict(analysis)}`) : null));
  } else if (analysis) {
    children.push(h("div", { id: "verdict", "data-verdict": analysis.verdict }, `last analysis: ${describeVerdict(analysis)}`));
  }
  const first = events.length ? events[0].time : 0;
  children.push(h("ol", { id: "steps", "data-count": steps.length },
    steps.map((e, i) => h("li", { "data-step": e.step, "data-weight": e.weights ? JSON.stringify(e.weights) : null,
                                   class: i === steps.length - 1 ? "latest" : "" },
      `+${(e.time - first).toFixed(1)}s ${e.step}`, e.weights ? ` ${Object.entries(e.weights).map(([p, w]) => `${p} ${w}%`).join(" / ")}` : ""))));
  if (actions) {
    children.push(running ? actionBar(name, ["promote", deployment.paused ? "resume" : "pause", "abort"])
                          : service.previous ? actionBar(name, ["rollback"]) : "");
  }
  box.replaceChildren(...children);
  updateCountdown();
}

function describeVerdict(e) {
  if (e.verdict === "waiting") return `waiting for requests (${e.requests} of ${e.needed})`;
  if (e.verdict === "passing") return `passing (${pct(e.error_rate)} 5xx over ${e.requests} requests, limit ${pct(e.max_error_rate)})`;
  return `${e.verdict}: ${e.reason || ""}`;
}

function updateCountdown() {
  const element = document.getElementById("countdown");
  const deployment = state.deployments[selected];
  if (!element || !deployment) return;
  if (!deployment.step_ends_at) {
    element.textContent = deployment.paused ? "paused: the step clock stands still" : "next step: when the current one is done";
    element.dataset.seconds = "none";
    return;
  }
  const left = Math.max(0, deployment.step_ends_at - (Date.now() + state.offset) / 1000);
  element.textContent = `next step in ${left.toFixed(1)} s`;
  element.dataset.seconds = left.toFixed(1);
}

function actionBar(name, commands) {
  const result = h("span", { id: "action-result" });
  const buttons = commands.map((command) => h("button", { "data-action": command, onclick: async () => {
    if ((command === "abort" || command === "rollback") && !confirm(`${command} ${name}?`)) return;
    const response = await fetch(`/api/services/${encodeURIComponent(name)}/${command}`,
                                 { method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" });
    const answer = await response.json().catch(() => ({}));
    result.textContent = response.ok ? `${command}: sent` : `${command} refused: ${answer.error || response.status}`;
  } }, command));
  return h("div", { class: "actions" }, buttons, result);
}

function renderPools(service) {
  const rates = latestRates(selected);
  const rows = service.pools.map((pool) => {
    const r = rates[pool.name] || {};
    return h("tr", { "data-pool": pool.name },
      h("td", null, h("span", { class: "dot", style: `background:${colourOf(pool.name)}` }), pool.name),
      h("td", { class: "num" }, `${pool.weight}%`), h("td", { class: "num" }, pct(r.share)),
      h("td", { class: "num" }, num(r.rps)), h("td", { class: "num" }, num(r.errors)), h("td", { class: "num" }, ms(r.p99)),
      h("td", null, pool.upstreams.map((u) => h("span", { class: "upstream", "data-address": u.address, "data-health": u.health },
        h("span", { class: `dot ${u.eligible ? "" : "unhealthy"}` }), `${u.address} ${u.health} · ${u.in_flight} in flight`))));
  });
  for (const u of service.draining) {
    rows.push(h("tr", { "data-draining": u.address },
      h("td", null, u.pool || "–"), h("td", { class: "num" }, "out"), h("td"), h("td"), h("td"), h("td"),
      h("td", null, h("span", { class: "upstream" }, h("span", { class: "dot draining" }), `${u.address} draining · ${u.in_flight} in flight`))));
  }
  document.querySelector("#pools tbody").replaceChildren(...rows);
}

function renderCertificates(https) {
  const section = document.getElementById("certificates");
  const table = section.querySelector("table");
  section.dataset.https = https ? https.listen : "none";
  document.getElementById("certificates-none").hidden = Boolean(https);
  table.hidden = !https;
  const certificates = https ? https.certificates : [];
  table.querySelector("tbody").replaceChildren(...certificates.map((c) =>
    h("tr", { "data-certificate": c.name, "data-days-left": c.days_left },
      h("td", null, c.name), h("td", null, c.hosts.join(", ")), h("td", null, c.source), h("td", null, c.issuer),
      h("td", null, c.not_after), h("td", { class: `num ${c.days_left < 14 ? "bad" : ""}` }, String(c.days_left)))));
  document.getElementById("certificate-errors").replaceChildren(...(https ? https.errors : []).map((e) =>
    h("li", { class: "bad" }, `${e.file ? e.file + ": " : ""}${e.error}`)));
}

function renderHistory(deployments) {
  document.querySelector("#history tbody").replaceChildren(...deployments.map((d) =>
    h("tr", { "data-id": d.id, "data-status": d.status },
      h("td", null, d.id), h("td", null, d.strategy), h("td", null, `${d.from_version || "–"} → ${d.to_version}`),
      h("td", null, h("span", { class: `badge ${d.status === "succeeded" ? "ok" : d.status === "running" ? "warn" : "bad"}` }, d.status)),
      h("td", { class: "num" }, d.seconds === null ? "–" : `${d.seconds}s`), h("td", null, clock(d.started_at)),
      h("td", { class: "seen" }, d.message || ""))));
}

// ------------------------------------------------------------------ charts (plotly.js, served by the daemon)
function renderCharts(name) {
  if (typeof Plotly === "undefined") return;
  const series = state.series;
  const pools = [];
  for (const sample of series) for (const pool of Object.keys(sample.rates[name] || {})) if (!pools.includes(pool)) pools.push(pool);
  const x = series.map((s) => new Date(s.t * 1000));
  const value = (sample, pool, key) => { const r = (sample.rates[name] || {})[pool]; return r ? r[key] : null; };
  const markers = state.markers.filter((m) => m.service === name && series.length && m.t >= series[0].t);
  const shapes = markers.map((m) => ({ type: "line", xref: "x", yref: "paper", x0: new Date(m.t * 1000), x1: new Date(m.t * 1000),
                                       y0: 0, y1: 1, line: { color: "#888", width: 1, dash: "dot" } }));
  const notes = markers.map((m) => ({ x: new Date(m.t * 1000), y: 1, xref: "x", yref: "paper", text: m.label, showarrow: false,
                                      textangle: -90, xanchor: "right", yanchor: "top", font: { size: 9, color: "#666" } }));
  const layout = (title, extra) => ({ title: { text: title, font: { size: 13 }, y: 0.98 }, margin: { l: 45, r: 10, t: 48, b: 30 },
                                     showlegend: true, legend: { orientation: "h", x: 0, y: 1.0, yanchor: "bottom", xanchor: "left" },
                                     shapes, datarevision: ticks, xaxis: { type: "date", nticks: 4 }, uirevision: name, ...extra });
  const config = { displayModeBar: false, responsive: true, staticPlot: false };
  const rps = pools.map((pool) => ({ name: pool, x, y: series.map((s) => value(s, pool, "rps") ?? 0), type: "scatter", mode: "lines",
                                     stackgroup: "rps", line: { width: 0.5, color: colourOf(pool) } }));
  Plotly.react("chart-rps", rps, layout("requests/s per version (stacked: the real split)", { annotations: notes, yaxis: { rangemode: "tozero" } }), config);
  const errors = pools.map((pool) => ({ name: pool, x, y: series.map((s) => value(s, pool, "errors") ?? 0), type: "scatter", mode: "lines",
                                        line: { color: colourOf(pool) } }));
  Plotly.react("chart-errors", errors, layout("5xx/s per version", { yaxis: { rangemode: "tozero" } }), config);
  const p99 = pools.map((pool) => ({ name: pool, x, y: series.map((s) => { const v = value(s, pool, "p99"); return v === null ? null : v * 1000; }),
                                     type: "scatter", mode: "lines", connectgaps: false, line: { color: colourOf(pool), shape: "hv" } }));
  Plotly.react("chart-p99", p99, layout("p99 per version (ms, bucket bound)", { yaxis: { rangemode: "tozero" } }), config);
  // What the stacked chart shows at its last point, for people and tests alike.
  const last = series.length ? series[series.length - 1] : null;
  const total = last ? pools.reduce((sum, pool) => sum + (value(last, pool, "rps") || 0), 0) : 0;
  const share = {};
  for (const pool of pools) share[pool] = total ? Math.round((value(last, pool, "rps") || 0) / total * 1000) / 10 : 0;
  const chart = document.getElementById("chart-rps");
  chart.dataset.share = JSON.stringify(share);
  chart.dataset.points = String(series.length);
}

window.addEventListener("hashchange", () => { selected = decodeURIComponent(location.hash.slice(1)); render(); });
setInterval(updateCountdown, 200);
connect();
