// Logs: every service's lines, newest first, filtered (by the server) by service, level, job id, request
// id and text (a substring of the message, in any case). "Follow" opens the server-sent event stream
// GET /logs/stream with the same filters, from the newest line shown: new lines come as they arrive.
import {api, eventsUrl, query} from "../api.js";
import {h, shortId, when} from "../dom.js";

const LEVELS = ["", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];

export function render(main, {params}) {
  const input = (name, label, attrs = {}) => {
    const el = h("input", {name, value: params.get(name) || "", ...attrs});
    return [el, h("label", {}, label, el)];
  };
  const [service, serviceLabel] = input("service", "Service", {size: 14});
  const level = h("select", {name: "min_level"}, LEVELS.map((l) => h("option", {value: l}, l || "any")));
  const [job, jobLabel] = input("job_id", "Job id", {size: 38});
  const [requestId, requestLabel] = input("request_id", "Request id", {size: 20});
  const [text, textLabel] = input("q", "Text", {size: 16, maxlength: 200});
  const follow = h("input", {type: "checkbox", name: "follow"});
  const form = h("form", {class: "filters", role: "search", "aria-label": "Filter logs"}, serviceLabel,
    h("label", {}, "Level at least", level), jobLabel, requestLabel, textLabel,
    h("button", {type: "submit"}, "Show"), h("label", {class: "row"}, h("span", {}, follow, " Follow live")));
  const status = h("p", {class: "muted", role: "status"});
  const body = h("tbody");
  main.append(h("h1", {}, "Logs"), form, status, h("div", {class: "table-wrap"}, h("table", {id: "logs"},
    h("thead", {}, h("tr", {}, ["Time", "Service", "Level", "Message", "Job"].map((c) => h("th", {scope: "col"}, c)))),
    body)));
  let newest = null, source = null;

  const filters = () => ({service: service.value.trim(), min_level: level.value, job_id: job.value.trim(),
    request_id: requestId.value.trim(), q: text.value});
  const row = (l) => h("tr", {}, h("td", {}, when(l.timestamp)), h("td", {}, l.service), h("td", {}, l.level),
    h("td", {class: "log-line"}, l.message),
    h("td", {}, l.meta && l.meta.job_id ? h("a", {href: `#/jobs/${l.meta.job_id}`, class: "mono", title: l.meta.job_id}, shortId(l.meta.job_id)) : ""));

  // Each load is numbered: an answer that comes after a newer load began (the view's first, unfiltered page
  // answering after the filtered one) is dropped, not shown over the newer one.
  let loads = 0;
  async function load() {
    const mine = ++loads;
    try {
      const items = (await api("GET", "/logs" + query({...filters(), limit: 200}))).items;
      if (mine !== loads) return;
      newest = items.length ? items[0].timestamp : newest;
      body.replaceChildren(...items.map(row));
      status.textContent = `${body.children.length} lines${follow.checked ? ", following" : ""}.`;
    } catch (error) {
      if (mine === loads) status.textContent = `Could not read the logs: ${error.message}`;
    }
  }

  function stop() {
    if (source) source.close();
    source = null;
  }

  function start() {
    stop();
    // EventSource reconnects by itself, sending the id of the last line it had as Last-Event-ID.
    source = new EventSource(eventsUrl("/logs/stream" + query({...filters(), after: newest})));
    source.addEventListener("log", (event) => {
      const line = JSON.parse(event.data);
      if (!newest || line.timestamp > newest) newest = line.timestamp;
      body.prepend(row(line));
      while (body.children.length > 1000) body.lastChild.remove();
      status.textContent = `${body.children.length} lines, following.`;
    });
    source.addEventListener("skipped", () => {
      status.textContent = `${body.children.length} lines, following (some lines came too fast to show).`;
    });
  }

  function following() {
    if (follow.checked) start(); else stop();
    status.textContent = `${body.children.length} lines${follow.checked ? ", following" : ""}.`;
  }

  follow.addEventListener("change", following);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    newest = null;
    stop();
    await load();
    if (follow.checked) start();
  });
  load();
  return stop;
}
