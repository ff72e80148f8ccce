// The runs table: one row per run file, the config values that differ between runs as columns, final and best
// metrics, steps and size. Sort (click a heading), filter (one box for any cell, one per column: text, or
// >, >=, <, <=, = with a number) and group by a column; tick any number of runs for their curves, or two to
// compare. The table's state lives in the URL's hash (#/?sort=seed&desc=1&group=activation&q=relu), so a
// link reproduces it. Names and config values are untrusted: textContent only.

import { getJSON } from "./data.js";
import { el } from "./panel.js";

const ALWAYS = ["model", "activation", "dataset"]; // config columns shown even when every run has the same value
const LEFT_OUT = new Set(["experiment"]); // a column of its own

export function fmt(v, digits = 3) {
  return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
}

// the config keys whose values differ between these configs (in first-seen order): what tells runs apart
export function differingKeys(configs) {
  const keys = [...new Set(configs.flatMap((c) => Object.keys(c)))];
  return keys.filter((k) => new Set(configs.map((c) => JSON.stringify(c[k] ?? null))).size > 1);
}

// the table's columns for these rows: fixed ones around the config keys that differ (or are always shown)
export function tableColumns(rows) {
  const configs = rows.filter((r) => r.readable || r.staged).map((r) => r.config || {});
  const keys = [...new Set(configs.flatMap((c) => Object.keys(c)))].filter((k) => !LEFT_OUT.has(k));
  const differs = new Set(differingKeys(configs));
  const shown = [...ALWAYS.filter((k) => keys.includes(k)), ...keys.filter((k) => !ALWAYS.includes(k) && differs.has(k))];
  const config = shown.map((k) => ({
    key: `config.${k}`, label: k, value: (r) => (r.config ? r.config[k] ?? null : null),
  }));
  const acc = (which) => (r) => (r[which] ? r[which].accuracy : null);
  return [
    { key: "name", label: "run", value: (r) => r.name },
    { key: "state", label: "status", value: (r) => r.state },
    { key: "experiment", label: "experiment", value: (r) => r.experiment ?? null },
    ...config,
    { key: "steps", label: "steps", value: (r) => r.last_step ?? null, text: (r) => r.readable || r.staged ? `${r.last_step ?? "–"} of ${r.planned_steps ?? "?"} · ${r.frames ?? "?"} frames` : "" },
    { key: "final_accuracy", label: "final accuracy", value: acc("final"), text: (r) => r.final ? `${fmt(r.final.accuracy)} ${r.final.kind} @${r.final.step}` : "–" },
    { key: "best_accuracy", label: "best accuracy", value: acc("best"), text: (r) => r.best ? `${fmt(r.best.accuracy)} @${r.best.step}` : "–" },
    { key: "final_loss", label: "final loss", value: (r) => (r.final ? r.final.loss : null), text: (r) => r.final ? fmt(r.final.loss, 4) : "–" },
    { key: "test_accuracy", label: "test accuracy", value: (r) => r.test_accuracy ?? null, text: (r) => fmt(r.test_accuracy, 4) },
    { key: "bytes", label: "size", value: (r) => r.bytes, text: (r) => `${(r.bytes / 1e6).toFixed(1)} MB` },
  ];
}

function cellText(col, r) {
  if (col.text) return col.text(r);
  const v = col.value(r);
  if (v === null || v === undefined) return "–";
  return typeof v === "number" && !Number.isInteger(v) ? String(Number(v.toPrecision(4))) : String(v);
}

// one column filter: ">0.8", "<= 100", "=relu", "!=relu" or a substring (case-insensitive)
export function matches(filter, value, text) {
  const f = filter.trim();
  if (!f) return true;
  const m = /^(>=|<=|!=|>|<|=)\s*(.+)$/.exec(f);
  if (m) {
    const [, op, arg] = m;
    const num = Number(arg);
    if (!Number.isNaN(num) && typeof value === "number") {
      return { ">": value > num, ">=": value >= num, "<": value < num, "<=": value <= num, "=": value === num, "!=": value !== num }[op];
    }
    const same = String(value ?? "").toLowerCase() === arg.toLowerCase();
    if (op === "=") return same;
    if (op === "!=") return !same;
    return false;
  }
  return text.toLowerCase().includes(f.toLowerCase());
}

function compare(a, b) {
  if (a === b) return 0;
  if (a === null || a === undefined) return 1; // empty cells last, whichever the direction
  if (b === null || b === undefined) return -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric: true });
}

export class RunsTable {
  // params: the hash's query; onState(params): the table's state changed (to keep it in the URL)
  constructor(params, onState) {
    this.onState = onState;
    this.sort = params.get("sort") || "name";
    this.desc = params.get("desc") === "1";
    this.group = params.get("group") || "";
    this.query = params.get("q") || "";
    this.filters = new Map(); // column key -> filter text
    for (const [k, v] of params) if (k.startsWith("f.")) this.filters.set(k.slice(2), v);
    this.selected = new Set((params.get("sel") || "").split(",").filter(Boolean));
    this.built = new Map(); // row or group key -> [what it was built from, its <tr>]: unchanged rows are kept
    this.used = new Set(); // the keys of this render
    this.rows = [];
    this.columns = [];
    this.head = el("thead");
    this.body = el("tbody");
    this.search = el("input", { type: "search", id: "runs-filter", placeholder: "any cell: relu, seed, 0.8 …", size: "28" });
    this.search.value = this.query;
    this.search.addEventListener("input", () => { this.query = this.search.value; this.render(); });
    this.groupBox = el("select", { id: "runs-group", "aria-label": "group by" });
    this.groupBox.addEventListener("change", () => { this.group = this.groupBox.value; this.render(); });
    this.count = el("span", { class: "muted", id: "runs-count" });
    this.curvesLink = el("a", { class: "button disabled", id: "curves-link", text: "curves of the selected runs" });
    this.compareLink = el("a", { class: "button disabled", id: "compare-link", text: "compare the two selected runs" });
    this.root = el("div", { class: "runs-table" },
      el("div", { class: "row selection" }, el("label", {}, "filter ", this.search), el("label", {}, " group by ", this.groupBox), this.count),
      el("table", { class: "runs", id: "runs" }, this.head, this.body),
      el("p", {}, this.curvesLink, " ", this.compareLink,
        el("span", { class: "muted", text: " tick any runs for their curves on shared axes, or two to see them side by side at the same step" })));
  }

  setRows(rows) {
    this.rows = rows;
    const columns = tableColumns(rows);
    const keys = columns.map((c) => c.key).join("\n");
    this.columns = columns;
    if (keys !== this.columnKeys) { this.columnKeys = keys; this.buildHead(); }
    const ids = new Set(rows.filter((r) => r.readable).map((r) => r.id));
    for (const id of [...this.selected]) if (!ids.has(id)) this.selected.delete(id);
    this.render();
  }

  buildHead() {
    const sortRow = el("tr", {}, el("th", {}, this.allBox = el("input", { type: "checkbox", id: "select-shown", "aria-label": "select every run shown" })),
      ...this.columns.map((c) => {
        const th = el("th", { class: "sortable", "data-key": c.key, title: "sort by this column (again: reverse)" }, el("span", { text: c.label }), el("span", { class: "arrow" }));
        th.addEventListener("click", () => {
          if (this.sort === c.key) this.desc = !this.desc; else { this.sort = c.key; this.desc = false; }
          this.render();
        });
        return th;
      }));
    this.allBox.addEventListener("change", () => {
      for (const r of this.shown) if (r.readable) { if (this.allBox.checked) this.selected.add(r.id); else this.selected.delete(r.id); }
      this.render();
    });
    const filterRow = el("tr", { class: "filters" }, el("th"), ...this.columns.map((c) => {
      const box = el("input", { type: "text", class: "col-filter", "data-key": c.key, placeholder: "filter", "aria-label": `filter ${c.label}` });
      box.value = this.filters.get(c.key) || "";
      box.addEventListener("input", () => { if (box.value) this.filters.set(c.key, box.value); else this.filters.delete(c.key); this.render(); });
      return el("th", {}, box);
    }));
    this.head.replaceChildren(sortRow, filterRow);
    const none = el("option", { value: "", text: "(none)" });
    this.groupBox.replaceChildren(none, ...this.columns.filter((c) => !["name", "bytes"].includes(c.key)).map((c) => {
      const o = el("option", { value: c.key, text: c.label });
      o.selected = c.key === this.group;
      return o;
    }));
  }

  // the rows that pass every filter, sorted
  visible() {
    const cols = new Map(this.columns.map((c) => [c.key, c]));
    const q = this.query.trim().toLowerCase();
    const shown = this.rows.filter((r) => {
      if (q && !this.columns.some((c) => cellText(c, r).toLowerCase().includes(q))) return false;
      for (const [key, f] of this.filters) {
        const c = cols.get(key);
        if (c && !matches(f, c.value(r), cellText(c, r))) return false;
      }
      return true;
    });
    const col = cols.get(this.sort) || cols.get("name");
    shown.sort((a, b) => {
      const d = compare(col.value(a), col.value(b));
      return (this.desc && col.value(a) !== null && col.value(b) !== null ? -d : d) || compare(a.name, b.name);
    });
    return shown;
  }

  render() {
    this.shown = this.visible();
    const cols = new Map(this.columns.map((c) => [c.key, c]));
    for (const th of this.head.querySelectorAll("th.sortable")) {
      th.querySelector(".arrow").textContent = th.dataset.key === this.sort ? (this.desc ? " ▼" : " ▲") : "";
    }
    const out = [];
    const group = cols.get(this.group);
    if (group) {
      const groups = new Map();
      for (const r of this.shown) {
        const key = cellText(group, r);
        if (!groups.has(key)) groups.set(key, { value: group.value(r), rows: [] });
        groups.get(key).rows.push(r);
      }
      const ordered = [...groups.entries()].sort((a, b) => compare(a[1].value, b[1].value));
      for (const [key, g] of ordered) {
        const line = groupLine(group.label, key, g.rows);
        out.push(this.kept(`group ${key}`, `${this.columnKeys}\n${line}`, () => el("tr", { class: "group", "data-group": key },
          el("td", { colspan: String(this.columns.length + 1), text: line }))));
        out.push(...g.rows.map((r) => this.row(r)));
      }
    } else {
      out.push(...this.shown.map((r) => this.row(r)));
    }
    if (!this.rows.length) out.push(el("tr", {}, el("td", { colspan: String(this.columns.length + 1), class: "muted", text: "no run files yet: emergence record learn_to_see writes runs/learn_to_see.h5" })));
    // rows that changed in place are swapped one by one; anything else (a new order, rows come or gone) is rebuilt
    const before = [...this.body.children];
    const changed = out.length === before.length ? out.map((tr, i) => (tr === before[i] ? -1 : i)).filter((i) => i >= 0) : null;
    if (changed && changed.every((i) => !out[i].isConnected)) for (const i of changed) before[i].replaceWith(out[i]);
    else this.body.replaceChildren(...out);
    for (const key of [...this.built.keys()]) if (!this.used.has(key)) this.built.delete(key);
    this.used = new Set();
    this.count.textContent = ` ${this.shown.length} of ${this.rows.length} runs shown · ${this.selected.size} selected`;
    this.allBox.checked = this.shown.some((r) => r.readable) && this.shown.every((r) => !r.readable || this.selected.has(r.id));
    const ids = [...this.selected];
    this.curvesLink.classList.toggle("disabled", !ids.length);
    this.curvesLink.textContent = `curves of the ${ids.length} selected run${ids.length === 1 ? "" : "s"}`;
    if (ids.length) this.curvesLink.setAttribute("href", `#/curves/${ids.join(",")}`); else this.curvesLink.removeAttribute("href");
    const two = ids.length === 2;
    this.compareLink.classList.toggle("disabled", !two);
    if (two) this.compareLink.setAttribute("href", `#/compare/${ids[0]}/${ids[1]}`); else this.compareLink.removeAttribute("href");
    this.onState(this.state());
  }

  state() {
    const p = new URLSearchParams();
    if (this.sort !== "name") p.set("sort", this.sort);
    if (this.desc) p.set("desc", "1");
    if (this.group) p.set("group", this.group);
    if (this.query) p.set("q", this.query);
    for (const [k, v] of this.filters) p.set(`f.${k}`, v);
    if (this.selected.size) p.set("sel", [...this.selected].join(","));
    return p;
  }

  // the <tr> built from `source` under `key` last time, or a new one from build(): a listing that changes in a
  // few rows (a sweep recording) redraws only those
  kept(key, source, build) {
    this.used.add(key);
    const had = this.built.get(key);
    if (had && had[0] === source) return had[1];
    const tr = build();
    this.built.set(key, [source, tr]);
    return tr;
  }

  row(r) {
    return this.kept(`run ${r.id}`, `${this.columnKeys}\n${this.selected.has(r.id)}\n${JSON.stringify(r)}`, () => this.buildRow(r));
  }

  buildRow(r) {
    const tick = el("input", { type: "checkbox", "aria-label": "select" });
    tick.checked = this.selected.has(r.id);
    tick.disabled = !r.readable;
    tick.addEventListener("change", () => {
      if (tick.checked) this.selected.add(r.id); else this.selected.delete(r.id);
      this.render();
    });
    const cells = this.columns.map((c) => {
      if (c.key === "name") return el("td", {}, r.readable ? el("a", { href: `#/run/${r.id}`, text: r.name }) : el("span", { text: r.name }));
      if (c.key === "state") {
        const td = el("td", { class: `state ${r.state}` }, el("span", { text: r.state }));
        if (r.reason) td.append(el("div", { class: "reason", text: r.reason }));
        if (r.progress) td.append(el("div", { class: "reason progress", text: `a retry records it elsewhere: ${r.progress}` }));
        return td;
      }
      return el("td", { "data-key": c.key, text: r.readable || r.staged || c.key === "bytes" ? cellText(c, r) : "" });
    });
    return el("tr", { "data-id": r.id, class: r.readable ? "" : r.staged ? "staged" : "unreadable" }, el("td", {}, tick), ...cells);
  }
}

// "activation = relu · 3 runs · best accuracy mean 0.812, 0.800–0.830"
function groupLine(label, key, rows) {
  const best = rows.map((r) => (r.best ? r.best.accuracy : null)).filter((v) => v !== null);
  const mean = best.length ? best.reduce((a, b) => a + b, 0) / best.length : null;
  const spread = best.length > 1 ? `, ${fmt(Math.min(...best))}–${fmt(Math.max(...best))}` : "";
  return `${label} = ${key} · ${rows.length} run${rows.length === 1 ? "" : "s"}` + (mean === null ? "" : ` · best accuracy mean ${fmt(mean)}${spread}`);
}

// The list view: the table, refreshed every second (rows are redrawn only when the answer changed).
export class ListView {
  constructor(app, where, params, stats, fail, conn) {
    stats.view = "list";
    where.textContent = "runs";
    this.stats = stats;
    this.fail = fail;
    this.conn = conn;
    this.root = el("p", { class: "muted" });
    this.table = new RunsTable(params, (p) => {
      const text = p.toString();
      history.replaceState(null, "", text ? `#/?${text}` : "#/");
    });
    app.replaceChildren(el("h2", { text: "Runs" }), this.root, this.table.root);
    this.refresh();
    this.timer = setInterval(() => this.refresh(), 1000);
  }

  stop() { clearInterval(this.timer); }

  async refresh() {
    let answer;
    const started = performance.now();
    try { answer = await getJSON("/api/runs"); this.conn.textContent = ""; } catch (e) { this.fail(e); return; }
    this.root.textContent = `${answer.runs.length} run files under ${answer.root}${answer.truncated ? " (list cut short)" : ""}; updates every second.`;
    const key = JSON.stringify(answer.runs);
    if (key !== this.lastKey) {
      this.lastKey = key;
      this.table.setRows(answer.runs);
    }
    this.stats.tableMs = performance.now() - started;
    this.stats.ready = true;
  }
}
