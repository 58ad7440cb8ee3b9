// The Submit page: a JSON editor whose text the API validates; every error is listed at its field
// path (the API's error details), and a path found in the text is selected when clicked.

import { api } from "./api.js";
import { navigate } from "./app.js";
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
  const button = h("button", { type: "submit", id: "submit-job" }, "Validate and submit");
  const form = h("form.submit", {}, editor, h("div.row", {}, savepoint, button), summary, problems);
  root.append(h("h1", {}, "Submit a job"),
    h("p.muted", {}, "The job as JSON (the body of POST /api/v1/jobs). The API checks it; each problem is shown at its field path."),
    form);
  editor.addEventListener("input", () => sessionStorage.setItem(DRAFT_KEY, editor.value));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problems.replaceChildren();
    summary.className = "";
    summary.textContent = "";
    let body;
    try {
      body = JSON.parse(editor.value);
    } catch (e) {
      show("invalid_json", "The text is not JSON", [{ path: "(body)", message: e.message }]);
      return;
    }
    button.disabled = true;
    try {
      const from = savepoint.value.trim();
      const query = from ? `?from_savepoint=${encodeURIComponent(from)}` : "";
      const answer = await api("POST", `/jobs${query}`, body);
      sessionStorage.removeItem(DRAFT_KEY);
      navigate(`/jobs/${encodeURIComponent(answer.job_id)}`);
    } catch (e) {
      show(e.code, e.message, e.details);
    } finally {
      button.disabled = false;
    }
  });

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
