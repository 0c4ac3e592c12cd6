// One job: its facts, attempts and errors, progress, its history of states (live, from its event
// stream), its log lines; cancel it, or retry it from the dead letters when it failed.
import {api, eventsUrl, query} from "../api.js";
import {flash, h, state, table, when} from "../dom.js";

export function render(main, {id}) {
  const facts = h("div", {class: "card"});
  const actions = h("div", {class: "row"});
  const attempts = h("div");
  const history = h("tbody");
  const logs = h("div");
  main.append(h("h1", {}, "Job ", h("span", {class: "mono"}, id)), actions, facts,
    h("h2", {}, "Attempts and errors"), attempts,
    h("h2", {}, "History"), h("div", {class: "table-wrap"}, h("table", {id: "history"}, h("thead", {}, h("tr", {},
      h("th", {scope: "col"}, "Event"), h("th", {scope: "col"}, "From"), h("th", {scope: "col"}, "To"),
      h("th", {scope: "col", class: "num"}, "Attempt"), h("th", {scope: "col", class: "num"}, "Progress"))), history)),
    h("h2", {}, "Logs"), logs);

  async function load() {
    let job;
    try {
      job = await api("GET", `/jobs/${id}`);
    } catch (error) {
      facts.replaceChildren(h("p", {class: "error"}, `Could not read the job: ${error.message}`));
      return;
    }
    facts.replaceChildren(h("dl", {class: "facts", id: "job-facts"},
      h("dt", {}, "State"), h("dd", {dataset: {field: "state"}}, state(job.state),
        job.cancel_requested ? " (cancel requested)" : ""),
      h("dt", {}, "Kind"), h("dd", {}, `${job.kind} (${job.type})`),
      h("dt", {}, "Owner"), h("dd", {class: "mono"}, job.owner),
      h("dt", {}, "Attempt"), h("dd", {}, `${job.attempt} of ${job.max_attempts}`),
      h("dt", {}, "Progress"), h("dd", {}, h("progress", {max: 1, value: job.progress || 0}),
        ` ${Math.round((job.progress || 0) * 100)}%`),
      h("dt", {}, "Priority"), h("dd", {}, job.priority ?? 0),
      h("dt", {}, "Created"), h("dd", {}, when(job.created_at)),
      h("dt", {}, "Started"), h("dd", {}, when(job.started_at)),
      h("dt", {}, "Ended"), h("dd", {}, when(job.finished_at)),
      h("dt", {}, "Error"), h("dd", {}, job.error || "–")));
    attempts.replaceChildren(job.errors.length ? table([["Attempt", "num"], ["Error"], ["At"]],
      job.errors.map((e) => h("tr", {}, h("td", {class: "num"}, e.attempt), h("td", {}, e.error), h("td", {}, when(e.at))))) :
      h("p", {class: "muted"}, "No attempt failed."));
    const buttons = [];
    if (!["finished", "failed", "cancelled"].includes(job.state)) {
      buttons.push(h("button", {type: "button", class: "danger", onclick: async () => {
        if (!window.confirm(`Cancel job ${id}?`)) return;
        try {
          await api("DELETE", `/jobs/${id}`);
          flash("Cancel requested.");
          load();
        } catch (error) {
          flash(`Could not cancel: ${error.message}`, true);
        }
      }}, "Cancel job"));
    }
    if (job.state === "failed") {
      buttons.push(h("button", {type: "button", onclick: async () => {
        try {
          const answer = await api("POST", "/dead/requeue", {job_ids: [id]});
          if (answer.requeued.length) flash("Requeued: it runs again with its kind's attempts.");
          else flash(`Not requeued: ${answer.skipped.map((s) => s.reason).join("; ")}`, true);
          load();
        } catch (error) {
          flash(`Could not retry: ${error.message}`, true);
        }
      }}, "Retry (requeue from the dead letters)"));
    }
    buttons.push(h("button", {type: "button", class: "secondary", onclick: load}, "Refresh"));
    actions.replaceChildren(...buttons);
    try {
      const data = await api("GET", `/jobs/${id}/logs` + query({limit: 200}));
      logs.replaceChildren(data.items.length ? table([["Time"], ["Service"], ["Level"], ["Message"]],
        data.items.map((l) => h("tr", {}, h("td", {}, when(l.timestamp)), h("td", {}, l.service), h("td", {}, l.level),
          h("td", {class: "log-line"}, l.message)))) : h("p", {class: "muted"}, "No log line yet."));
    } catch (error) {
      logs.replaceChildren(h("p", {class: "error"}, `Could not read the logs: ${error.message}`));
    }
  }

  let pending = null;
  const events = new EventSource(eventsUrl(`/jobs/${id}/events?topic=job.updated`));
  events.addEventListener("job.updated", (event) => {
    const e = JSON.parse(event.data);
    history.append(h("tr", {}, h("td", {class: "mono"}, event.lastEventId), h("td", {}, e.previous_state || "–"),
      h("td", {}, state(e.state)), h("td", {class: "num"}, e.attempt), h("td", {class: "num"},
        `${Math.round((e.progress || 0) * 100)}%`)));
    clearTimeout(pending);
    pending = setTimeout(load, 300);  // a burst of events (the stream's backlog) reads the job once
  });
  events.onerror = () => events.close();  // the stream ends after the job's final state
  load();
  return () => {
    clearTimeout(pending);
    events.close();
  };
}
