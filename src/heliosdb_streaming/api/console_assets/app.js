// The console's router: one HTML shell, one page module per path, links followed without reloading.

import { forgetToken, hasToken } from "./api.js";
import * as jobs from "./jobs.js";
import * as job from "./job.js";
import * as submit from "./submit.js";

const routes = [
  [/^\/$/, jobs, "jobs"],
  [/^\/submit$/, submit, "submit"],
  [/^\/jobs\/([^/]+)$/, job, "jobs"],
];

let stop = null; // the shown page's cleanup (its pollers)

function show() {
  if (stop) stop();
  stop = null;
  document.getElementById("flash").hidden = true;
  const root = document.getElementById("view");
  root.replaceChildren();
  const path = location.pathname;
  for (const [pattern, page, nav] of routes) {
    const match = path.match(pattern);
    if (!match) continue;
    for (const link of document.querySelectorAll("[data-nav]")) {
      link.classList.toggle("active", link.dataset.nav === nav);
    }
    stop = page.render(root, match.slice(1).map(decodeURIComponent), new URLSearchParams(location.search));
    document.getElementById("forget-token").hidden = !hasToken();
    return;
  }
  root.textContent = `No console page at ${path}.`;
}

export function navigate(url) {
  history.pushState(null, "", url);
  show();
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href]");
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey) return;
  const url = new URL(link.href);
  if (url.origin !== location.origin || url.pathname.startsWith("/api/") || link.target) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});

window.addEventListener("popstate", show);
document.getElementById("forget-token").addEventListener("click", () => {
  forgetToken();
  location.reload();
});
show();
