// The Submit page: a JSON editor whose text the API validates; every error is listed at its field
// path (the API's error details), and a path found in the text is selected when clicked. "Validate"
// is the API's dry run (POST /api/v1/jobs?dry_run=true): the plan the job would run with, or its
// errors, and no job is created.

import { api } from "./api.js";
import { navigate } from "./app.js";
import { renderPlan } from "./plan.js";
import { h } from "./util.js";

const EXAMPLE = {
  name: "my_job",
  config: { parallelism: 1, checkpoint_interval_ms: 10000, state_backend: "memory", restart_strategy: "fixed_delay" },
  sources: [{ type: "datagen", config: { schema: "transactions", rate_per_sec: 100, partitions: 1 } }],
  transformations: [{ type: "filter", config: { condition: "amount > 500" } }],
  sinks: [{ type: "discard", config: {} }],
};
const DRAFT_KEY = "helios.submit.draft";

export function render(root) {
  const editor = h("textarea", { id: "job-editor", spellcheck: "false", rows: 24, "aria-label": "Job (JSON)" });
  editor.value = sessionStorage.getItem(DRAFT_KEY) || JSON.stringify(EXAMPLE, null, 2);
  const savepoint = h("input", { id: "from-savepoint", placeholder: "optional: restore from a savepoint location",
    "aria-label": "From savepoint" });
  const problems = h("ul.problems", { id: "submit-errors" });
  const summary = h("p", { id: "submit-summary" });
  const plan = h("div", { id: "validate-plan" });
  const validateButton = h("button", { type: "button", id: "validate-job", class: "secondary" }, "Validate");
  const button = h("button", { type: "submit", id: "submit-job" }, "Validate and submit");
  const form = h("form.submit", {}, editor, h("div.row", {}, savepoint, validateButton, button), summary, problems, plan);
  root.append(h("h1", {}, "Submit a job"),
    h("p.muted", {}, "The job as JSON (the body of POST /api/v1/jobs). The API checks it; each problem is shown at its field path."),
    form);
  editor.addEventListener("input", () => sessionStorage.setItem(DRAFT_KEY, editor.value));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = parsed();
    if (body === undefined) return;
    await busy(async () => {
      const answer = await api("POST", `/jobs${query(false)}`, body);
      sessionStorage.removeItem(DRAFT_KEY);
      navigate(`/jobs/${encodeURIComponent(answer.job_id)}`);
    });
  });

  validateButton.addEventListener("click", async () => {
    const body = parsed();
    if (body === undefined) return;
    await busy(async () => {
      const answer = await api("POST", `/jobs${query(true)}`, body);
      summary.className = "ok";
      summary.textContent = `Valid: ${answer.name} at parallelism ${answer.parallelism}, ` +
        `${answer.plan.stages.length} stage${answer.plan.stages.length === 1 ? "" : "s"}. Nothing was submitted.`;
      plan.replaceChildren(h("h2", {}, "Plan"), renderPlan(answer.plan));
    });
  });

  // The editor's JSON, after clearing the last answer; undefined (and the parse error shown) if it is not JSON.
  function parsed() {
    problems.replaceChildren();
    plan.replaceChildren();
    summary.className = "";
    summary.textContent = "";
    try {
      return JSON.parse(editor.value);
    } catch (e) {
      show("invalid_json", "The text is not JSON", [{ path: "(body)", message: e.message }]);
      return undefined;
    }
  }

  function query(dryRun) {
    const params = new URLSearchParams();
    const from = savepoint.value.trim();
    if (from) params.set("from_savepoint", from);
    if (dryRun) params.set("dry_run", "true");
    const text = params.toString();
    return text ? `?${text}` : "";
  }

  async function busy(call) {
    button.disabled = validateButton.disabled = true;
    try {
      await call();
    } catch (e) {
      show(e.code, e.message, e.details);
    } finally {
      button.disabled = validateButton.disabled = false;
    }
  }

  function show(code, message, details) {
    summary.className = "error";
    summary.textContent = `${code}: ${message}`;
    problems.replaceChildren(...(details || []).map((d) =>
      h("li", { dataset: { path: d.path } },
        h("a.path", { href: "#", onclick: (event) => { event.preventDefault(); select(d.path); } }, d.path),
        h("span", {}, " " + d.message))));
  }

  // Selects the last key of a path such as sources[0].config.rate_per_sec in the text, if it is there.
  function select(path) {
    const keys = path.split(/[.[\]]+/).filter((k) => k && !/^\d+$/.test(k));
    const key = keys[keys.length - 1];
    const at = key ? editor.value.indexOf(`"${key}"`) : -1;
    editor.focus();
    if (at >= 0) editor.setSelectionRange(at, at + key.length + 2);
  }
  return () => {};
}
