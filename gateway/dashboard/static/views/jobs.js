// Jobs: every job, newest first, filtered by kind, state, owner and time, a page at a time (the registry's
// cursor); a job id goes straight to its page.
import {api, query} from "../api.js";
import {flash, h, shortId, state, table, when} from "../dom.js";

const STATES = ["", "pending", "processing", "finished", "failed", "cancelled"];

async function kinds() {
  try {
    const spec = await (await fetch("/openapi.json")).json();
    const param = spec.paths["/jobs"].get.parameters.find((p) => p.name === "kind");
    return param.schema.enum || [];
  } catch {
    return [];
  }
}

export function render(main, {params}) {
  const field = (name, label, input) => h("label", {}, label, input);
  const kind = h("input", {name: "kind", list: "kinds", value: params.get("kind") || "", size: 12});
  const stateSelect = h("select", {name: "state"}, STATES.map((s) => h("option", {value: s,
    selected: s === (params.get("state") || "")}, s || "any")));
  const owner = h("input", {name: "owner", value: params.get("owner") || "", size: 20, placeholder: "user id"});
  const after = h("input", {name: "created_after", type: "datetime-local", value: params.get("created_after") || ""});
  const before = h("input", {name: "created_before", type: "datetime-local", value: params.get("created_before") || ""});
  const datalist = h("datalist", {id: "kinds"});
  const filters = h("form", {class: "filters", role: "search", "aria-label": "Filter jobs"},
    field("kind", "Kind", kind), field("state", "State", stateSelect), field("owner", "Owner", owner),
    field("created_after", "Created from", after), field("created_before", "to (before)", before),
    h("button", {type: "submit"}, "Filter"));
  const search = h("form", {class: "filters", role: "search", "aria-label": "Find a job"},
    h("label", {}, "Job id", h("input", {name: "id", size: 38, pattern: "[0-9a-fA-F-]{36}", required: true})),
    h("button", {type: "submit", class: "secondary"}, "Open"));
  const holder = h("div");
  const pager = h("div", {class: "pager"});
  main.append(h("h1", {}, "Jobs"), filters, search, datalist, holder, pager);
  kinds().then((names) => datalist.replaceChildren(...names.map((n) => h("option", {value: n}))));

  const cursors = [null];  // the cursor of each page seen, to go back
  async function load(page) {
    const q = {kind: kind.value.trim(), state: stateSelect.value, owner: owner.value.trim(), limit: 50,
      created_after: after.value ? new Date(after.value).toISOString() : "",
      created_before: before.value ? new Date(before.value).toISOString() : "", cursor: cursors[page] || ""};
    try {
      const data = await api("GET", "/jobs" + query(q));
      const rows = data.items.map((job) => h("tr", {dataset: {job: job.id}},
        h("td", {}, h("a", {href: `#/jobs/${job.id}`, class: "mono", title: job.id}, shortId(job.id))),
        h("td", {}, job.kind), h("td", {}, state(job.state)), h("td", {class: "num"}, `${job.attempt}/${job.max_attempts}`),
        h("td", {class: "num"}, `${Math.round((job.progress || 0) * 100)}%`),
        h("td", {class: "hide-narrow mono"}, job.owner), h("td", {}, when(job.created_at)),
        h("td", {class: "hide-narrow"}, when(job.updated_at))));
      holder.replaceChildren(rows.length ? table([["Job"], ["Kind"], ["State"], ["Attempt", "num"], ["Progress", "num"],
        ["Owner", "hide-narrow"], ["Created"], ["Changed", "hide-narrow"]], rows, {id: "jobs"}) :
        h("p", {class: "muted"}, "No job matches."));
      cursors[page + 1] = data.next_cursor;
      pager.replaceChildren(
        h("button", {type: "button", class: "secondary", disabled: page === 0, onclick: () => load(page - 1)}, "Newer"),
        h("span", {class: "muted"}, `page ${page + 1}`),
        h("button", {type: "button", class: "secondary", disabled: !data.next_cursor, onclick: () => load(page + 1)}, "Older"));
    } catch (error) {
      holder.replaceChildren(h("p", {class: "error"}, `Could not list jobs: ${error.message}`));
    }
  }
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    cursors.length = 1;
    load(0);
  });
  search.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = new FormData(search).get("id").trim().toLowerCase();
    if (/^[0-9a-f-]{36}$/.test(id)) window.location.hash = `#/jobs/${id}`;
    else flash("A job id is a UUID.", true);
  });
  load(0);
}
