// The Job page: status and actions, the plan, live charts, checkpoints, savepoints and logs.
// A job whose run is being restarted after a failure shows a "recovering" badge beside its status;
// the autoscaler's section (last decision, recent ones) appears when the job has one.
//
// Charts: throughput is the metrics API's per-minute history over the chosen window, then the
// samples of each poll; checkpoint duration is the job's checkpoints list; p99 latency and
// backpressure have no history in the API, so the page samples them at each poll (they fill in while
// the page is open).

import { api } from "./api.js";
import { LineChart } from "./chart.js";
import { renderPlan } from "./plan.js";
import { bytes, describeError, duration, flash, h, number, statusBadge, time } from "./util.js";

const WINDOWS = { "1m": 60e3, "5m": 300e3, "1h": 3600e3, "24h": 86400e3 };
const POLL_MS = 2000;
const SLOW_POLL_MS = 5000;
const LOG_LEVELS = ["debug", "info", "warn", "error"];

export function render(root, [jobId]) {
  const path = `/jobs/${encodeURIComponent(jobId)}`;
  let windowName = sessionStorage.getItem("helios.window") || "5m";
  const samples = { throughput: [], p99: [], backpressure: [] }; // this page's own samples, newest last
  let history = [], checkpoints = [];
  const timers = [];

  // ---- layout
  const title = h("h1", {}, jobId);
  const badge = h("span");
  const message = h("p.message", { id: "job-message" });
  const facts = h("dl.facts", { id: "job-facts" });
  const actions = h("div.actions", {},
    button("pause", "Pause", () => act("POST", `${path}/pause`, undefined, "Paused")),
    button("resume", "Resume", () => act("POST", `${path}/resume`, undefined, "Resumed")),
    button("cancel", "Cancel", () => confirm("Cancel this job?") && act("DELETE", path, undefined, "Cancelled")),
    button("cancel-savepoint", "Cancel with savepoint", () => confirm("Take a savepoint and cancel this job?")
      && act("DELETE", `${path}?savepoint=true`, undefined, "Cancelled with a savepoint")),
    button("restart", "Restart", () => confirm("Restart this job from its newest checkpoint or savepoint?")
      && act("POST", `${path}/restart`, {}, "Restarted")));
  const windowSelect = h("select", { id: "metrics-window", "aria-label": "Window" },
    Object.keys(WINDOWS).map((w) => h("option", { value: w, selected: w === windowName }, w)));
  const canvases = {
    throughput: h("canvas", { id: "chart-throughput" }),
    p99: h("canvas", { id: "chart-p99" }),
    backpressure: h("canvas", { id: "chart-backpressure" }),
    checkpoint: h("canvas", { id: "chart-checkpoint" }),
  };
  const charts = {
    throughput: new LineChart(canvases.throughput, { title: "Throughput", unit: "ev/s", format: number }),
    p99: new LineChart(canvases.p99, { title: "p99 latency", unit: "ms", color: "#9333ea", format: (v) => number(v, 2) }),
    backpressure: new LineChart(canvases.backpressure, { title: "Backpressure", unit: "", color: "#dc2626",
      format: (v) => v.toFixed(2) }),
    checkpoint: new LineChart(canvases.checkpoint, { title: "Checkpoint duration", unit: "ms", color: "#059669",
      format: (v) => number(v, 0) }),
  };
  const stats = h("dl.facts", { id: "metrics-facts" });
  const scaler = h("div", { id: "autoscaler", hidden: true });
  const plan = h("div", { id: "plan" });
  const tasks = h("tbody");
  const checkpointRows = h("tbody", { id: "checkpoints" });
  const savepointRows = h("tbody", { id: "savepoints" });
  const description = h("input", { id: "savepoint-description", placeholder: "description (optional)", maxlength: 1000,
    "aria-label": "Savepoint description" });
  const createButton = h("button", { type: "submit", id: "create-savepoint" }, "Create savepoint");
  const logLevel = h("select", { id: "log-level", "aria-label": "Log level" },
    h("option", { value: "" }, "all levels"), LOG_LEVELS.map((l) => h("option", { value: l }, l)));
  const logTail = h("input", { id: "log-tail", type: "number", min: 1, max: 100000, value: 200, "aria-label": "Tail lines" });
  const logFollow = h("input", { id: "log-follow", type: "checkbox", checked: true });
  const logs = h("pre.logs", { id: "logs" });

  root.append(
    h("p.crumbs", {}, h("a", { href: "/" }, "Jobs"), " / ", jobId),
    h("div.toolbar", {}, title, badge),
    message, facts, actions,
    section("Metrics", h("label", {}, "window ", windowSelect)),
    stats,
    h("div.charts", {}, Object.values(canvases).map((c) => h("div.chart", {}, c))),
    scaler,
    section("Plan"), plan,
    h("table", {}, h("thead", {}, tr("th", ["Task", "Name", "Status", "Parallelism"])), tasks),
    section("Checkpoints"),
    h("table", {}, h("thead", {}, tr("th", ["Checkpoint", "Time", "Duration", "Size", "Status"])), checkpointRows),
    section("Savepoints"),
    h("form.row", { id: "savepoint-form", onsubmit: createSavepoint }, description,
      createButton),
    h("table", {}, h("thead", {}, tr("th", ["Savepoint", "Created", "Size", "Description", "Restore", ""])), savepointRows),
    section("Logs", h("span.row", {}, logLevel, h("label", {}, "tail ", logTail), h("label", {}, logFollow, " follow"),
      h("button", { type: "button", id: "log-refresh", onclick: refreshLogs }, "Refresh"))),
    logs);

  windowSelect.addEventListener("change", () => {
    windowName = windowSelect.value;
    sessionStorage.setItem("helios.window", windowName);
    refreshMetrics();
  });
  logLevel.addEventListener("change", refreshLogs);
  logTail.addEventListener("change", refreshLogs);

  // ---- data
  async function refreshDetails() {
    let d;
    try {
      d = await api("GET", path);
    } catch (e) {
      message.textContent = describeError(e);
      message.className = "message error";
      return;
    }
    title.textContent = d.name;
    document.title = `${d.name} · HeliosDB Streaming`;
    badge.replaceChildren(statusBadge(d.status), ...(d.recovering
      ? [h("span.badge.badge-recovering", { id: "recovering-badge", title: d.message || "" }, "recovering")] : []));
    message.textContent = d.message || "";
    message.className = d.status === "failed" ? "message error" : d.recovering ? "message warn" : "message";
    facts.replaceChildren(...fact("Job id", d.job_id), ...fact("Parallelism", d.config.parallelism),
      ...fact("Uptime", duration(d.uptime_seconds)), ...fact("Running time", duration(d.metrics.running_ms / 1000)),
      ...fact("Submitted", time(d.submitted_at)),
      ...fact("Started", time(d.started_at)), ...fact("Finished", time(d.finished_at)),
      ...fact("Restarts", d.metrics.restarts), ...fact("State backend", d.config.state_backend));
    const terminal = ["finished", "failed", "cancelled"].includes(d.status);
    enable("pause", d.status === "running");
    enable("resume", d.status === "paused");
    enable("cancel", !terminal);
    enable("cancel-savepoint", d.status === "running");
    enable("restart", ["running", "failed", "cancelled", "finished"].includes(d.status)); // the lifecycle's
    createButton.disabled = terminal || d.status === "submitted";
    plan.replaceChildren(renderPlan(d.plan));
    scaler.hidden = !d.autoscaler;
    scaler.replaceChildren(...(d.autoscaler ? renderAutoscaler(d.autoscaler) : []));
    tasks.replaceChildren(...d.tasks.map((t) => tr("td", [t.task_id, t.name, statusBadge(t.status), t.parallelism])));
  }

  async function refreshMetrics() {
    let m;
    try {
      m = await api("GET", `${path}/metrics?window=${windowName}`);
    } catch {
      return; // a job without metrics yet (submitted): the charts stay as they are
    }
    const now = Date.parse(m.timestamp) || Date.now();
    history = m.history.map((p) => ({ t: Date.parse(p.timestamp), v: p.throughput_per_sec }));
    samples.throughput.push({ t: now, v: m.metrics.throughput_per_sec });
    samples.p99.push({ t: now, v: m.metrics.latency.p99_ms });
    samples.backpressure.push({ t: now, v: m.metrics.backpressure.current_level });
    const horizon = now - WINDOWS["24h"];
    for (const list of Object.values(samples)) while (list.length && list[0].t < horizon) list.shift();
    const l = m.metrics.latency;
    const lag = m.metrics.source ? m.metrics.source.lag_records : null;
    stats.replaceChildren(...fact("Events", number(m.metrics.events_processed_total)),
      ...fact("Throughput now / average", `${number(m.metrics.throughput_per_sec)} / ` +
        `${number(m.metrics.average_throughput_per_sec)} ev/s`),
      ...fact("Source lag", lag === null || lag === undefined ? "–" : `${number(lag)} records`),
      ...fact("Latency p50/p95/p99", `${number(l.p50_ms, 2)} / ${number(l.p95_ms, 2)} / ${number(l.p99_ms, 2)} ms`),
      ...fact("Checkpoints", `${m.metrics.checkpoint.count} (${m.metrics.checkpoint.failures} failed)`),
      ...fact("Backpressure", m.metrics.backpressure.current_level.toFixed(2)),
      ...fact("Errors", `${m.metrics.errors.count} (${number(m.metrics.errors.rate_per_min)}/min)`),
      ...fact("CPU", `${number(m.metrics.resources.cpu_usage_percent)} %`),
      ...fact("Memory", `${m.metrics.resources.memory_used_mb} MiB`));
    drawCharts();
  }

  function drawCharts() {
    const to = Date.now(), from = to - WINDOWS[windowName];
    // the API's per-minute history, then this page's samples since it opened
    const since = samples.throughput.length ? samples.throughput[0].t : Infinity;
    charts.throughput.draw([...history.filter((p) => p.t < since), ...samples.throughput], from, to);
    charts.p99.draw(samples.p99, from, to);
    charts.backpressure.draw(samples.backpressure, from, to);
    charts.checkpoint.draw(checkpoints.filter((c) => c.status === "completed")
      .map((c) => ({ t: Date.parse(c.timestamp), v: c.duration_ms })), from, to);
  }

  async function refreshCheckpoints() {
    try {
      checkpoints = (await api("GET", `${path}/checkpoints`)).checkpoints;
    } catch {
      return;
    }
    checkpointRows.replaceChildren(...checkpoints.slice(-20).reverse().map((c) =>
      tr("td", [c.checkpoint_id, time(c.timestamp), `${c.duration_ms} ms`, bytes(c.size_bytes), c.status])));
    if (!checkpoints.length) checkpointRows.append(empty(5, "No checkpoints yet."));
  }

  async function refreshSavepoints() {
    let list;
    try {
      list = (await api("GET", `${path}/savepoints`)).savepoints;
    } catch {
      return;
    }
    savepointRows.replaceChildren(...list.slice().reverse().map(savepointRow));
    if (!list.length) savepointRows.append(empty(6, "No savepoints."));
  }

  function savepointRow(s) {
    const parallelism = h("input", { type: "number", min: 1, placeholder: "parallelism", class: "narrow",
      "aria-label": `Parallelism for ${s.savepoint_id}` });
    const restore = () => {
      const body = { savepoint_id: s.savepoint_id };
      if (parallelism.value) body.config_overrides = { parallelism: Number(parallelism.value) };
      return confirm(`Restart the job from ${s.savepoint_id}?`) && act("POST", `${path}/restart`, body, "Restored");
    };
    const remove = () => confirm(`Delete ${s.savepoint_id}?`)
      && act("DELETE", `${path}/savepoints/${encodeURIComponent(s.savepoint_id)}`, undefined, "Savepoint deleted");
    return h("tr", { dataset: { savepointId: s.savepoint_id } },
      h("td", { title: s.location }, s.savepoint_id), h("td", {}, time(s.created_at)), h("td", {}, bytes(s.size_bytes)),
      h("td", {}, s.description || ""),
      h("td", {}, h("span.row", {}, parallelism, h("button", { type: "button", class: "restore", onclick: restore }, "Restore"))),
      h("td", {}, h("button", { type: "button", class: "danger delete", onclick: remove }, "Delete")));
  }

  async function createSavepoint(event) {
    event.preventDefault();
    const text = description.value.trim();
    const done = await act("POST", `${path}/savepoints`, text ? { description: text } : {}, "Savepoint created");
    if (done) description.value = "";
  }

  async function refreshLogs() {
    const query = new URLSearchParams({ tail: String(Math.max(1, Number(logTail.value) || 200)) });
    if (logLevel.value) query.set("level", logLevel.value);
    let answer;
    try {
      answer = await api("GET", `${path}/logs?${query}`);
    } catch (e) {
      logs.textContent = describeError(e);
      return;
    }
    const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
    logs.replaceChildren(...answer.logs.map((l) =>
      h(`span.log.log-${l.level}`, {}, `${l.timestamp} ${l.level.toUpperCase().padEnd(5)} ${l.task_id || "-"} ${l.message}\n`)));
    if (logFollow.checked && atBottom) logs.scrollTop = logs.scrollHeight;
  }

  // Runs a command; the page refreshes what it changed. True when it succeeded.
  async function act(method, url, body, done) {
    try {
      await api(method, url, body);
      flash(done);
      await Promise.all([refreshDetails(), refreshSavepoints(), refreshCheckpoints()]);
      return true;
    } catch (e) {
      flash(describeError(e), "error");
      return false;
    }
  }

  function enable(name, on) {
    actions.querySelector(`[data-action="${name}"]`).disabled = !on;
  }

  // ---- polling
  // a hidden tab does not poll (it catches up on the next tick once shown)
  const poll = (fn, ms) => { fn(); timers.push(setInterval(() => document.hidden || fn(), ms)); };
  poll(refreshDetails, POLL_MS);
  poll(refreshMetrics, POLL_MS);
  poll(async () => { await refreshCheckpoints(); drawCharts(); }, SLOW_POLL_MS);
  poll(refreshSavepoints, SLOW_POLL_MS);
  poll(() => (logFollow.checked || !logs.childElementCount) && refreshLogs(), POLL_MS);
  const resize = () => drawCharts();
  window.addEventListener("resize", resize);
  return () => { timers.forEach(clearInterval); window.removeEventListener("resize", resize); };
}

// The autoscaler's section: its state, the last decision with what it was made from, the recent ones.
function renderAutoscaler(a) {
  const last = a.last_decision;
  const percent = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(0)} %`);
  const change = (d) => d.action === "none" ? `stay at ${d.current_parallelism}` : `${d.action.replace("_", " ")} ` +
    `${d.current_parallelism} → ${d.parallelism}`;
  const lastFacts = last ? [...fact("Decision", change(last)), ...fact("Kind", last.kind),
    ...fact("Utilization", percent(last.utilization)), ...fact("Backpressure", percent(last.backpressure)),
    ...fact("Limited by", last.limited_by), ...fact("Applied", last.applied ? "yes" : "no"),
    ...fact("At", time(last.timestamp))] : fact("Decision", "none yet");
  return [
    section("Autoscaler"),
    h("dl.facts", { id: "autoscaler-facts" }, ...fact("Mode", a.mode), ...fact("Parallelism", a.parallelism),
      ...fact("Rescaling", a.rescaling ? "yes" : "no"), ...fact("Rescales", a.rescales),
      ...(a.last_error ? fact("Last error", a.last_error) : [])),
    h("dl.facts", { id: "autoscaler-last" }, ...lastFacts),
    last ? h("p.muted", { id: "autoscaler-reason" }, last.reason) : null,
    a.history.length ? h("table", { id: "autoscaler-history" },
      h("thead", {}, tr("th", ["Time", "Kind", "Decision", "Reason"])),
      h("tbody", {}, a.history.slice().reverse().map((d) => tr("td", [time(d.timestamp), d.kind, change(d), d.reason])))) : null,
  ].filter(Boolean);
}

function button(name, label, onclick) {
  return h("button", { type: "button", dataset: { action: name }, onclick, class: name.startsWith("cancel") ? "danger" : "" }, label);
}

function section(name, ...extra) {
  return h("div.section", {}, h("h2", {}, name), ...extra);
}

function fact(name, value) {
  return [h("div", {}, h("dt", {}, name), h("dd", {}, value === null || value === undefined ? "–" : String(value)))];
}

function tr(cell, values) {
  return h("tr", {}, values.map((v) => h(cell, {}, v)));
}

function empty(columns, text) {
  return h("tr", {}, h("td.muted", { colspan: columns }, text));
}
