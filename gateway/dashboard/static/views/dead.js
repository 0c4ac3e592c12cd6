// Dead letters: the jobs that ran out of attempts, oldest death first; requeue one, several or all of a
// queue, or discard them (after a confirmation).
import {api, query} from "../api.js";
import {flash, h, shortId, table, when} from "../dom.js";

export function render(main) {
  const queue = h("input", {name: "queue", size: 14, placeholder: "all queues"});
  const filters = h("form", {class: "filters", role: "search", "aria-label": "Filter dead letters"},
    h("label", {}, "Queue", queue), h("button", {type: "submit"}, "Show"));
  const actions = h("div", {class: "row"});
  const holder = h("div");
  main.append(h("h1", {}, "Dead letters"), filters, actions, holder);
  let items = [];

  const selected = () => [...holder.querySelectorAll("input[type=checkbox][data-job]:checked")].map((c) => c.dataset.job);
  const scope = () => queue.value.trim() ? `of queue ${queue.value.trim()}` : "of every queue";

  async function act(verb, body, what) {
    try {
      const answer = await api("POST", `/dead/${verb}`, body);
      const done = answer.requeued || answer.discarded || [];
      const skipped = answer.skipped || [];
      flash(`${verb === "requeue" ? "Requeued" : "Discarded"} ${done.length} ${what}` +
        (skipped.length ? `; skipped ${skipped.length}: ${skipped.map((s) => s.reason).join("; ")}` : "."), skipped.length > 0);
    } catch (error) {
      flash(`Could not ${verb}: ${error.message}`, true);
    }
    load();
  }

  function all(verb) {
    const body = {all: true, ...(queue.value.trim() ? {queue: queue.value.trim()} : {})};
    if (verb === "discard" && !window.confirm(`Discard every dead letter ${scope()}? They cannot be requeued after.`)) return;
    act(verb, body, `dead letters ${scope()}`);
  }

  function some(verb) {
    const ids = selected();
    if (!ids.length) return flash("Select dead letters first.", true);
    if (verb === "discard" && !window.confirm(`Discard ${ids.length} dead letters? They cannot be requeued after.`)) return;
    act(verb, {job_ids: ids}, "dead letters");
  }

  actions.append(
    h("button", {type: "button", onclick: () => some("requeue")}, "Requeue selected"),
    h("button", {type: "button", class: "secondary", onclick: () => all("requeue")}, "Requeue all"),
    h("button", {type: "button", class: "danger", onclick: () => some("discard")}, "Discard selected"),
    h("button", {type: "button", class: "danger", onclick: () => all("discard")}, "Discard all"));

  async function load() {
    try {
      items = (await api("GET", "/dead" + query({queue: queue.value.trim(), limit: 200}))).items;
    } catch (error) {
      holder.replaceChildren(h("p", {class: "error"}, `Could not list dead letters: ${error.message}`));
      return;
    }
    const rows = items.map((d) => h("tr", {dataset: {dead: d.job_id}},
      h("td", {}, h("input", {type: "checkbox", dataset: {job: d.job_id}, "aria-label": `select ${d.job_id}`})),
      h("td", {}, h("a", {href: `#/jobs/${d.job_id}`, class: "mono", title: d.job_id}, shortId(d.job_id))),
      h("td", {}, d.queue), h("td", {}, d.kind), h("td", {class: "num"}, d.attempt), h("td", {}, d.error || "–"),
      h("td", {}, when(d.died_at)),
      h("td", {}, h("button", {type: "button", class: "secondary", "aria-label": `Requeue ${d.job_id}`,
        onclick: () => act("requeue", {job_ids: [d.job_id]}, "dead letter")}, "Requeue"))));
    holder.replaceChildren(rows.length ? table([[""], ["Job"], ["Queue"], ["Kind"], ["Attempt", "num"], ["Error"],
      ["Died"], [""]], rows, {id: "dead"}) : h("p", {class: "muted", id: "no-dead"}, "No dead letter."));
  }
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  load();
}
