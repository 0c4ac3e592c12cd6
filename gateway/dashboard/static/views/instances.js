// Instances: every service instance the registry knows, its health and last heartbeat; handlers' jobs and slots.
import {ago, h, shortId, state, table, when} from "../dom.js";
import {subscribe} from "../live.js";

function health(instance) {
  if (instance.gone) return "gone";
  return instance.silent_s > 2 * instance.heartbeat_s ? "late" : "ok";
}

// A handler's running jobs, each a link to its page (the heartbeat names the first ones; the count is whole).
function runningJobs(s) {
  const ids = s.running_ids || [];
  if (!ids.length) return null;
  const links = ids.map((id) => h("li", {}, h("a", {href: `#/jobs/${id}`, class: "mono", title: id,
    "aria-label": `running job ${id}`}, shortId(id))));
  const more = (s.running ?? 0) - ids.length;
  if (more > 0) links.push(h("li", {class: "muted"}, `and ${more} more`));
  return h("ul", {class: "running-jobs", dataset: {field: "running"}}, links);
}

function work(instance) {
  const s = instance.status || {};
  if (instance.kind === "handler") {
    const busy = (s.slots ?? 0) - (s.free_slots ?? 0);
    return [`${s.running ?? 0} running · ${busy}/${s.slots ?? 0} slots busy${s.stopping ? " · stopping" : ""}`,
      runningJobs(s)];
  }
  return Object.entries(s).filter(([, v]) => typeof v !== "object").map(([k, v]) => `${k} ${v}`).join(" · ");
}

export function render(main) {
  const holder = h("div");
  main.append(h("h1", {}, "Instances"), holder);
  return subscribe(({snapshot}) => {
    const rows = (snapshot.instances || []).map((i) => h("tr", {dataset: {instance: i.name}},
      h("td", {}, i.kind), h("th", {scope: "row"}, i.name), h("td", {}, state(health(i))),
      h("td", {}, `${ago(i.silent_s)} ago`, h("br"), h("small", {class: "muted"}, when(i.last_seen))),
      h("td", {}, work(i)), h("td", {class: "hide-narrow mono"}, i.url), h("td", {class: "hide-narrow"}, i.version)));
    holder.replaceChildren(table([["Kind"], ["Name"], ["Health"], ["Last heartbeat"], ["Work"],
      ["URL", "hide-narrow"], ["Version", "hide-narrow"]], rows, {id: "instances"}));
  });
}
