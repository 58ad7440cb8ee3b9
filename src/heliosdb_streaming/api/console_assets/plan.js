// A job's plan (the API's `plan`: stages and why each boundary exists), drawn for the Job page and for
// the Submit page's dry run.

import { h } from "./util.js";

export function renderPlan(plan) {
  if (!plan) return h("p.muted", {}, "No plan.");
  return h("div", {}, h("ol.plan", {}, plan.stages.map((s) => h("li.stage", { dataset: { stage: s.index } },
    h("strong", {}, `Stage ${s.index}`), ` · input ${s.input}`, s.key ? ` by ${s.key}` : "", ` · ${s.tasks} task${s.tasks === 1 ? "" : "s"}`,
    h("div.steps", {}, s.steps.length ? s.steps.map((p) => h("span.step", {}, `${p.index}: ${p.type}`)) : h("span.muted", {}, "source → sink"))))),
  plan.boundaries.length ? h("ul.muted.boundaries", {}, plan.boundaries.map((b) => h("li", {}, boundaryText(b)))) : null);
}

function boundaryText(b) {
  return `stage ${b.stage} starts at step ${b.step}${b.key ? ` (by ${b.key})` : ""}: ${b.reason}`;
}
