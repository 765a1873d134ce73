// recap view: the page's script. Every text from the data is put in as text (textContent,
// createTextNode), never as HTML; the filter lives in the address (?q=...&status=ok), so a view
// can be reloaded and shared.
"use strict";

const $ = (id) => document.getElementById(id);
let META = null;
let PAGE = 0;
let LAST = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.appendChild(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
  }
  return node;
}

function shown(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(2);
  return String(value);
}

function params() {
  const form = $("filters");
  const p = new URLSearchParams();
  const q = form.q.value.trim();
  if (q) p.set("q", q);
  for (const box of form.querySelectorAll("input[name=status]:checked")) p.append("status", box.value);
  for (const select of form.querySelectorAll("select[data-flag]")) if (select.value) p.append("flag", select.dataset.flag + ":" + select.value);
  for (const input of form.querySelectorAll("input[data-bound]")) if (input.value.trim()) p.set(input.dataset.bound + "." + input.dataset.column, input.value.trim());
  if (form.where.value.trim()) p.set("where", form.where.value.trim());
  if (form.sort.value) { p.set("sort", form.sort.value); p.set("order", form.order.value); }
  p.set("per", form.per.value);
  return p;
}

function restore(p) {
  const form = $("filters");
  form.q.value = p.get("q") || "";
  const statuses = p.getAll("status");
  for (const box of form.querySelectorAll("input[name=status]")) box.checked = statuses.includes(box.value);
  const flags = Object.fromEntries(p.getAll("flag").map((f) => f.split(":")));
  for (const select of form.querySelectorAll("select[data-flag]")) select.value = flags[select.dataset.flag] || "";
  for (const input of form.querySelectorAll("input[data-bound]")) input.value = p.get(input.dataset.bound + "." + input.dataset.column) || "";
  form.where.value = p.get("where") || "";
  form.sort.value = p.get("sort") || "";
  form.order.value = p.get("order") || "desc";
  form.per.value = p.get("per") || "48";
  form.layout.value = p.get("layout") || "grid";
  PAGE = parseInt(p.get("page") || "0", 10) || 0;
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function buildControls() {
  const statuses = $("statuses");
  for (const [status, n] of Object.entries(META.statuses)) {
    statuses.appendChild(el("label", { class: "check" }, el("input", { type: "checkbox", name: "status", value: status }), ` ${status} (${n})`));
  }
  const flags = $("flags");
  for (const flag of META.flags) {
    const select = el("select", { "data-flag": flag, "aria-label": flag },
      el("option", { value: "" }, "any"), el("option", { value: "1" }, "set"), el("option", { value: "0" }, "not set"));
    flags.appendChild(el("label", { class: "row" }, el("span", {}, flag), select));
  }
  const ranges = $("ranges");
  for (const column of META.numbers) {
    ranges.appendChild(el("label", { class: "row" }, el("span", {}, column),
      el("input", { type: "number", step: "any", "data-bound": "min", "data-column": column, placeholder: "min", "aria-label": column + " min" }),
      el("input", { type: "number", step: "any", "data-bound": "max", "data-column": column, placeholder: "max", "aria-label": column + " max" })));
  }
  for (const sort of META.sorts) $("sort").appendChild(el("option", { value: sort }, sort));
  $("output").textContent = META.output;
}

function chip(text, kind) { return el("span", { class: "chip " + (kind || "") }, text); }

function thumbnail(row, side) {
  if (!META.images[row.__shard]) return el("div", { class: "noimage" }, "no image");
  const src = `/api/image?shard=${encodeURIComponent(row.__shard)}&key=${encodeURIComponent(row.key)}&size=${side}`;
  const img = el("img", { src, alt: "image of " + row.key, loading: "lazy" });
  img.addEventListener("error", () => img.replaceWith(el("div", { class: "noimage" }, "no image")));
  return img;
}

function captions(row) {
  const box = el("div", { class: "captions" });
  for (const column of META.captions) {
    if (!(column in row)) continue;
    box.appendChild(el("div", { class: "caption" }, el("div", { class: "label" }, column), el("p", { class: "text " + column }, shown(row[column]))));
  }
  return box;
}

function card(row) {
  const chips = el("div", { class: "chips" }, chip(shown(row.status), row.status === "ok" ? "ok" : "bad"));
  for (const flag of META.flags) if (row[flag] === true) chips.appendChild(chip(flag, "flag"));
  const scores = el("div", { class: "scores" });
  for (const column of META.numbers) if (row[column] !== null && row[column] !== undefined) scores.appendChild(el("span", {}, `${column} ${shown(row[column])}`));
  const item = el("article", { class: "card", tabindex: "0", "data-shard": row.__shard, "data-row": row.__row },
    el("div", { class: "thumb" }, thumbnail(row, 256)),
    el("div", { class: "body" },
      el("div", { class: "key" }, `${row.__shard} · ${shown(row.key)}`), chips, captions(row), scores,
      row.error ? el("div", { class: "error" }, shown(row.error)) : null));
  const open = () => openDetail(row.__shard, row.__row);
  item.addEventListener("click", open);
  item.addEventListener("keydown", (event) => { if (event.key === "Enter") open(); });
  return item;
}

function histogram(column, h) {
  const NS = "http://www.w3.org/2000/svg";
  const width = 220, height = 48, top = Math.max(...h.counts, 1), bar = width / h.counts.length;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "hist");
  h.counts.forEach((n, i) => {
    const rect = document.createElementNS(NS, "rect");
    const tall = (n / top) * height;
    rect.setAttribute("x", i * bar); rect.setAttribute("y", height - tall);
    rect.setAttribute("width", Math.max(bar - 1, 1)); rect.setAttribute("height", tall);
    const title = document.createElementNS(NS, "title");
    title.textContent = `${n} rows`;
    rect.appendChild(title);
    svg.appendChild(rect);
  });
  return el("figure", { class: "histogram", "data-column": column },
    el("figcaption", {}, `${column} (${h.count} rows)`), svg,
    el("div", { class: "axis" }, el("span", {}, shown(h.low)), el("span", {}, shown(h.high))));
}

async function refresh(resetPage) {
  if (resetPage) PAGE = 0;
  const p = params();
  const address = new URLSearchParams(p);
  if (PAGE) address.set("page", PAGE);
  if ($("layout").value !== "grid") address.set("layout", $("layout").value);
  history.replaceState(null, "", "?" + address.toString());
  p.set("page", PAGE);
  const asked = p.toString();
  LAST = asked;
  $("error").hidden = true;
  try {
    const data = await getJSON("/api/rows?" + asked);
    if (LAST !== asked) return;  // a later change is on its way
    $("command").textContent = data.command;
    $("counts").textContent = `${data.matched.toLocaleString()} of ${data.total.toLocaleString()} rows`;
    const rows = $("rows");
    rows.className = $("layout").value;
    rows.replaceChildren(...data.rows.map(card));
    if (!data.rows.length) rows.appendChild(el("p", { class: "empty" }, "No rows match."));
    const pages = Math.max(1, Math.ceil(data.matched / data.per_page));
    $("page").textContent = `page ${PAGE + 1} of ${pages}`;
    $("prev").disabled = PAGE === 0;
    $("next").disabled = PAGE + 1 >= pages;
    document.body.dataset.loaded = asked;
  } catch (error) {
    $("error").textContent = error.message;
    $("error").hidden = false;
    document.body.dataset.loaded = asked;
    return;
  }
  getJSON("/api/histograms?" + asked).then((data) => {
    if (LAST !== asked) return;
    $("histograms").replaceChildren(el("h2", {}, "Filtered rows"),
      ...Object.entries(data.histograms).map(([column, h]) => histogram(column, h)));
  }).catch(() => {});
}

async function openDetail(shard, row) {
  const data = await getJSON(`/api/row?shard=${encodeURIComponent(shard)}&row=${encodeURIComponent(row)}`);
  const r = data.row, s = data.source;
  const table = el("table", { class: "columns" });
  for (const [column, value] of Object.entries(r)) {
    if (column.startsWith("__")) continue;
    table.appendChild(el("tr", {}, el("th", {}, column), el("td", {}, shown(value))));
  }
  const image = META.images[shard]
    ? el("img", { src: `/api/image?shard=${encodeURIComponent(shard)}&key=${encodeURIComponent(r.key)}`, alt: "full image of " + r.key, class: "full" })
    : el("div", { class: "noimage" }, s.note || "no image");
  const source = el("dl", { class: "source" },
    el("dt", {}, "shard"), el("dd", {}, `${s.shard}, row ${s.row}`),
    el("dt", {}, "parquet"), el("dd", {}, shown(s.parquet)),
    ...(s.file ? [el("dt", {}, "file"), el("dd", {}, s.file)] : [
      el("dt", {}, "tar"), el("dd", {}, shown(s.tar)),
      el("dt", {}, "member"), el("dd", {}, s.member ? `${s.member} (offset ${s.offset}, ${s.size} bytes)` : shown(s.note))]));
  $("detail-body").replaceChildren(el("div", { class: "detail-image" }, image),
    el("div", { class: "detail-text" }, captions(r), source, table));
  $("detail").hidden = false;
  $("close").focus();
}

function closeDetail() { $("detail").hidden = true; }

async function start() {
  META = await getJSON("/api/meta");
  buildControls();
  restore(new URLSearchParams(location.search));
  let timer = null;
  const form = $("filters");
  form.addEventListener("input", (event) => {
    clearTimeout(timer);
    const typing = event.target.matches("input[type=search], input[type=number], textarea");
    timer = setTimeout(() => refresh(true), typing ? 300 : 0);
  });
  form.addEventListener("submit", (event) => { event.preventDefault(); refresh(true); });
  $("reset").addEventListener("click", () => { restore(new URLSearchParams()); refresh(true); });
  $("prev").addEventListener("click", () => { PAGE = Math.max(0, PAGE - 1); refresh(false); });
  $("next").addEventListener("click", () => { PAGE += 1; refresh(false); });
  $("close").addEventListener("click", closeDetail);
  $("detail").addEventListener("click", (event) => { if (event.target === $("detail")) closeDetail(); });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeDetail(); });
  refresh(false);
}

document.addEventListener("DOMContentLoaded", start);
