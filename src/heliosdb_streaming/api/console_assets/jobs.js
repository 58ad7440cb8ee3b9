// The Jobs page: every job with its status, parallelism, uptime, throughput and p99 latency.
// Status filter and pages are the API's (status, limit, offset; the page size is `limit`, 1 to 1000);
// the name search reads every page of the status filter and pages the matches here, since the API has
// no name filter. The filter, search, page and page size are kept in the URL.

import { api } from "./api.js";
import { describeError, duration, h, number, statusBadge } from "./util.js";

const PAGE_SIZES = [10, 20, 50, 100];
const STATUSES = ["submitted", "running", "paused", "finished", "failed", "cancelled"];
const POLL_MS = 3000;

export function render(root, _params, query) {
  const state = {
    status: query.get("status") || "",
    search: query.get("q") || "",
    page: Math.max(0, Number(query.get("page") || 0) | 0),
    limit: Math.min(1000, Math.max(1, Number(query.get("limit") || 20) | 0)),
  };
  const sizes = [...new Set([...PAGE_SIZES, state.limit])].sort((a, b) => a - b);
  const sizeSelect = h("select", { id: "page-size", "aria-label": "Jobs per page" },
    sizes.map((n) => h("option", { value: n, selected: n === state.limit }, `${n} per page`)));
  const statusSelect = h("select", { id: "status-filter", "aria-label": "Status", name: "status" },
    h("option", { value: "" }, "all statuses"),
    STATUSES.map((s) => h("option", { value: s, selected: s === state.status }, s)));
  const searchInput = h("input", { type: "search", name: "q", placeholder: "search by name", value: state.search,
    "aria-label": "Search by name" });
  const body = h("tbody");
  const pager = h("div.pager");
  const error = h("pre.error", { hidden: true });
  root.append(
    h("div.toolbar", {}, h("h1", {}, "Jobs"), statusSelect, searchInput, sizeSelect, h("a.button", { href: "/submit" }, "Submit a job")),
    error,
    h("table.jobs", {},
      h("thead", {}, h("tr", {}, ["Name", "Status", "Parallelism", "Uptime", "Throughput (ev/s)", "p99 latency (ms)"]
        .map((c) => h("th", {}, c)))),
      body),
    pager);

  const remember = () => {
    const q = new URLSearchParams();
    if (state.status) q.set("status", state.status);
    if (state.search) q.set("q", state.search);
    if (state.page) q.set("page", String(state.page));
    if (state.limit !== 20) q.set("limit", String(state.limit));
    history.replaceState(null, "", "/" + (q.toString() ? "?" + q : ""));
  };
  statusSelect.addEventListener("change", () => { state.status = statusSelect.value; state.page = 0; remember(); refresh(); });
  sizeSelect.addEventListener("change", () => { state.limit = Number(sizeSelect.value); state.page = 0; remember(); refresh(); });
  searchInput.addEventListener("input", () => { state.search = searchInput.value.trim(); state.page = 0; remember(); refresh(); });

  const metrics = new Map(); // job id -> its last metrics answer, kept across polls
  let generation = 0;

  async function load() {
    const status = state.status ? `&status=${state.status}` : "";
    if (!state.search) {
      const answer = await api("GET", `/jobs?limit=${state.limit}&offset=${state.page * state.limit}${status}`);
      return { jobs: answer.jobs, total: answer.total };
    }
    const needle = state.search.toLowerCase();
    const matches = [];
    for (let offset = 0; ; offset += 1000) {
      const answer = await api("GET", `/jobs?limit=1000&offset=${offset}${status}`);
      matches.push(...answer.jobs.filter((j) => j.name.toLowerCase().includes(needle)));
      if (offset + answer.jobs.length >= answer.total || !answer.jobs.length) break;
    }
    return { jobs: matches.slice(state.page * state.limit, (state.page + 1) * state.limit), total: matches.length };
  }

  async function refresh() {
    const mine = ++generation;
    let page;
    try {
      page = await load();
      error.hidden = true;
    } catch (e) {
      error.textContent = describeError(e);
      error.hidden = false;
      return;
    }
    if (mine !== generation) return;
    body.replaceChildren(...page.jobs.map((job) => row(job, metrics.get(job.job_id))));
    if (!page.jobs.length) body.append(h("tr", {}, h("td.muted", { colspan: 6 }, "No jobs.")));
    const pages = Math.max(1, Math.ceil(page.total / state.limit));
    pager.replaceChildren(
      h("button", { type: "button", id: "previous-page", disabled: state.page === 0, onclick: () => { state.page--; remember(); refresh(); } }, "‹ Previous"),
      h("span", {}, `page ${state.page + 1} of ${pages} · ${page.total} job${page.total === 1 ? "" : "s"}`),
      h("button", { type: "button", id: "next-page", disabled: state.page + 1 >= pages, onclick: () => { state.page++; remember(); refresh(); } }, "Next ›"));
    // The rates come from each job's metrics (1 minute window); rows fill in as they answer.
    await Promise.all(page.jobs.map(async (job) => {
      try {
        metrics.set(job.job_id, await api("GET", `/jobs/${encodeURIComponent(job.job_id)}/metrics?window=1m`));
      } catch {
        return; // a job purged meanwhile: its row goes at the next poll
      }
      if (mine !== generation) return;
      const old = body.querySelector(`tr[data-job-id="${CSS.escape(job.job_id)}"]`);
      if (old) old.replaceWith(row(job, metrics.get(job.job_id)));
    }));
  }

  refresh();
  const timer = setInterval(() => document.hidden || refresh(), POLL_MS); // not while the tab is hidden
  return () => { clearInterval(timer); generation++; };
}

function row(job, m) {
  const live = m && m.metrics;
  return h("tr", { dataset: { jobId: job.job_id } },
    h("td", {}, h("a", { href: `/jobs/${encodeURIComponent(job.job_id)}` }, job.name), h("div.muted.small", {}, job.job_id)),
    h("td", {}, statusBadge(job.status)),
    h("td.num", {}, job.parallelism),
    h("td.num", {}, duration(job.uptime_seconds)),
    h("td.num.throughput", {}, live ? number(live.throughput_per_sec) : "…"),
    h("td.num.p99", {}, live ? number(live.latency.p99_ms, 2) : "…"));
}
