// The dashboard's router: one view at a time, chosen by the URL's hash (#/queues, #/jobs/<id>...).
import {connect} from "./live.js";
import * as queues from "./views/queues.js";
import * as instances from "./views/instances.js";
import * as jobs from "./views/jobs.js";
import * as job from "./views/job.js";
import * as dead from "./views/dead.js";
import * as logs from "./views/logs.js";

const ROUTES = [
  [/^#\/queues$/, queues], [/^#\/instances$/, instances], [/^#\/jobs\/([0-9a-f-]{36})$/, job],
  [/^#\/jobs(\?.*)?$/, jobs], [/^#\/dead$/, dead], [/^#\/logs(\?.*)?$/, logs],
];
let cleanup = null;

function show() {
  const hash = window.location.hash || "#/queues";
  const [pattern, view] = ROUTES.find(([re]) => re.test(hash)) || ROUTES[0];
  const match = hash.match(pattern) || [];
  if (cleanup) cleanup();
  const main = document.getElementById("view");
  main.replaceChildren();
  const section = "#/" + (hash.split(/[/?]/)[1] || "queues");
  for (const link of document.querySelectorAll(".top nav a")) {
    if (link.getAttribute("href") === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const params = new URLSearchParams(hash.includes("?") ? hash.slice(hash.indexOf("?") + 1) : "");
  cleanup = view.render(main, {id: match[1], params}) || null;
  document.title = `${main.querySelector("h1")?.textContent || "Dashboard"} · Conveyor`;
}

window.addEventListener("hashchange", () => {
  show();
  document.getElementById("view").focus({preventScroll: true});
});
connect();
show();
