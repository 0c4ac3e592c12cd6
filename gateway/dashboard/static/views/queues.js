// Queues: the live numbers of every queue, an hour of enqueued and finished per second, pause and resume.
import {api} from "../api.js";
import {sparkline} from "../chart.js";
import {ago, flash, h, table} from "../dom.js";
import {subscribe} from "../live.js";

const FIELDS = ["ready", "delayed", "leased", "dead"];

function rate(points) {
  return points && points.length ? points[points.length - 1] : null;
}

async function toggle(name, paused) {
  const action = paused ? "resume" : "pause";
  try {
    await api("POST", `/queues/${encodeURIComponent(name)}/${action}`);
    flash(`Queue ${name}: ${action}d.`);
  } catch (error) {
    flash(`Could not ${action} ${name}: ${error.message}`, true);
  }
}

export function render(main) {
  const body = h("tbody");
  const note = h("p", {class: "muted"});
  main.append(h("h1", {}, "Queues"), note,
    h("div", {class: "table-wrap"}, h("table", {id: "queues"},
      h("thead", {}, h("tr", {}, h("th", {scope: "col"}, "Queue"),
        FIELDS.map((f) => h("th", {scope: "col", class: "num"}, f)),
        h("th", {scope: "col", class: "num"}, "Oldest ready"),
        h("th", {scope: "col", class: "chart-cell"}, "Enqueued / s (1 h)"),
        h("th", {scope: "col", class: "chart-cell"}, "Finished / s (1 h)"),
        h("th", {scope: "col"}, "State"))),
      body)));
  const rows = new Map();

  function row(name) {
    if (rows.has(name)) return rows.get(name);
    const cells = Object.fromEntries(FIELDS.map((f) => [f, h("td", {class: "num", dataset: {field: f}})]));
    const oldest = h("td", {class: "num", dataset: {field: "oldest"}});
    const enq = h("canvas", {class: "spark", role: "img"}), fin = h("canvas", {class: "spark", role: "img"});
    const enqText = h("small"), finText = h("small");
    const stateCell = h("td", {dataset: {field: "state"}});
    const button = h("button", {type: "button", class: "secondary", dataset: {action: "toggle"}});
    const tr = h("tr", {dataset: {queue: name}}, h("th", {scope: "row"}, name), FIELDS.map((f) => cells[f]), oldest,
      h("td", {class: "chart-cell"}, enq, enqText), h("td", {class: "chart-cell"}, fin, finText),
      h("td", {}, stateCell, " ", button));
    const entry = {tr, cells, oldest, enq, fin, enqText, finText, stateCell, button, paused: false};
    button.addEventListener("click", () => toggle(name, entry.paused));
    rows.set(name, entry);
    body.append(tr);
    return entry;
  }

  return subscribe(({snapshot, history}) => {
    const queues = snapshot.queues || {};
    note.textContent = snapshot.error ? `The live feed could not refresh: ${snapshot.error}` :
      `Updated ${new Date(snapshot.t * 1000).toLocaleTimeString()}; ${Object.keys(queues).length} queues.`;
    for (const [name, q] of Object.entries(queues)) {
      const entry = row(name);
      for (const f of FIELDS) entry.cells[f].textContent = q[f] ?? 0;
      entry.oldest.textContent = ago(q.oldest_ready_age_s);
      const points = history[name] || [];
      const enq = points.map((p) => [p[0], p[1]]), fin = points.map((p) => [p[0], p[2]]);
      sparkline(entry.enq, enq, "#1f5fbf");
      sparkline(entry.fin, fin, "#1a7f37");
      const last = rate(points);
      entry.enqText.textContent = last ? `${last[1]}/s now` : "";
      entry.finText.textContent = last ? `${last[2]}/s now` : "";
      entry.enq.setAttribute("aria-label", `enqueued per second over the last hour, now ${last ? last[1] : 0}`);
      entry.fin.setAttribute("aria-label", `finished per second over the last hour, now ${last ? last[2] : 0}`);
      entry.paused = Boolean(q.paused);
      entry.stateCell.replaceChildren(h("span", {class: `state ${entry.paused ? "paused" : "ok"}`},
        entry.paused ? "paused" : "running"));
      entry.button.textContent = entry.paused ? "Resume" : "Pause";
      entry.button.setAttribute("aria-label", `${entry.paused ? "Resume" : "Pause"} queue ${name}`);
    }
  });
}
