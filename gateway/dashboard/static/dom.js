// A tiny element builder: h("td", {class: "num"}, "3") -> <td class="num">3</td>. Text is always text.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function table(headers, rows, attrs = {}) {
  return h("div", {class: "table-wrap"}, h("table", attrs,
    h("thead", {}, h("tr", {}, headers.map(([label, cls]) => h("th", {scope: "col", class: cls}, label)))),
    h("tbody", {}, rows)));
}

export function state(value) {
  return h("span", {class: `state ${value}`}, value);
}

export function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

export function flash(message, bad = false) {
  const box = document.getElementById("flash");
  box.replaceChildren(h("p", {class: bad ? "bad" : ""}, message));
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => box.replaceChildren(), 6000);
}

// A job's id as a table shows it: its last 8 hex digits. Job ids are time-ordered (UUID v7): their first
// digits are the time the job was made, the same for every job of a minute; their last are random.
export function shortId(id) {
  return `…${id.slice(-8)}`;
}
