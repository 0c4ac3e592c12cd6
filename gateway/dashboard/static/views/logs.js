// Logs: every service's lines, newest first, filtered (by the server) by service, level, job id, request
// id and text (a substring of the message, in any case). "Follow" asks for the lines newer than the newest shown every 2 s.
import {api, query} from "../api.js";
import {h, when} from "../dom.js";

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
  let newest = null, timer = null;

  const filters = () => ({service: service.value.trim(), min_level: level.value, job_id: job.value.trim(),
    request_id: requestId.value.trim(), q: text.value});
  const row = (l) => h("tr", {}, h("td", {}, when(l.timestamp)), h("td", {}, l.service), h("td", {}, l.level),
    h("td", {class: "log-line"}, l.message),
    h("td", {}, l.meta && l.meta.job_id ? h("a", {href: `#/jobs/${l.meta.job_id}`, class: "mono"}, l.meta.job_id.slice(0, 8)) : ""));

  async function load() {
    try {
      const items = (await api("GET", "/logs" + query({...filters(), limit: 200}))).items;
      newest = items.length ? items[0].timestamp : newest;
      body.replaceChildren(...items.map(row));
      status.textContent = `${body.children.length} lines${follow.checked ? ", following" : ""}.`;
    } catch (error) {
      status.textContent = `Could not read the logs: ${error.message}`;
    }
  }

  async function more() {
    if (!newest) return load();
    try {
      const items = (await api("GET", "/logs" + query({...filters(), since: newest, limit: 500}))).items
        .filter((l) => l.timestamp > newest);
      if (items.length) newest = items[0].timestamp;
      body.prepend(...items.map(row));
      while (body.children.length > 1000) body.lastChild.remove();
      status.textContent = `${body.children.length} lines, following.`;
    } catch (error) {
      status.textContent = `Could not read the logs: ${error.message}`;
    }
  }

  follow.addEventListener("change", () => {
    clearInterval(timer);
    if (follow.checked) timer = setInterval(more, 2000);
    status.textContent = `${body.children.length} lines${follow.checked ? ", following" : ""}.`;
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    newest = null;
    load();
  });
  load();
  return () => clearInterval(timer);
}
