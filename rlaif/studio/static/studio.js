// rlaif rubric studio: the editor page. Plain JS, no build step; every text from the server is set
// with textContent (never parsed as HTML). The API is documented in rlaif/studio/app.py; el, api and $
// come from common/page.js.
"use strict";

let current = null;      // rubric file name being edited
let lastExamples = [];   // examples of the last text that passed lint
let checkSeq = 0;        // newer checks make older answers stale
let calJob = null;       // id of the calibration being polled
let debounce = null;
let savedText = "";      // the file's text as last opened or saved
let methods = {};        // judge method name -> {needs_judge, pairwise, view}, from api/state
const unsaved = () => current !== null && $("editor").value !== savedText;

function status(text, kind = "") { $("status").textContent = text; $("status").className = kind; }
const fmt = (x, digits = 2) => (x === null || x === undefined ? "n/a" : Number(x).toFixed(digits));
const pct = (x) => (x === null || x === undefined ? "n/a" : `${Math.round(100 * x)}%`);

// ---- editor and gutter -------------------------------------------------------------------------
let marks = {};  // line -> "error" | "warning"
function drawGutter() {
  const n = $("editor").value.split("\n").length;
  const gutter = $("gutter");
  gutter.replaceChildren();
  for (let i = 1; i <= n; i++) {
    gutter.append(el("span", marks[i] ? { class: marks[i], title: `line ${i}` } : {}, String(i)), "\n");
  }
  gutter.scrollTop = $("editor").scrollTop;
}

function gotoLine(line) {
  const ed = $("editor");
  const lines = ed.value.split("\n");
  const start = lines.slice(0, line - 1).reduce((s, l) => s + l.length + 1, 0);
  ed.focus();
  ed.setSelectionRange(start, start + (lines[line - 1] || "").length);
  ed.scrollTop = Math.max(0, (line - 5) * 18.85);
}

// ---- files -------------------------------------------------------------------------------------
async function loadState() {
  const { ok, data } = await api("api/state");
  if (!ok) { status(data.error, "error"); return null; }
  methods = Object.fromEntries(data.methods.map((m) => [m.name, m]));
  const sel = $("file");
  sel.replaceChildren(...data.files.map((f) => el("option", { value: f }, f)));
  for (const name of [data.start, current]) {
    if (name && !data.files.includes(name) && ![...sel.options].some((o) => o.value === name)) {
      sel.append(el("option", { value: name }, name));
    }
  }
  if (current) sel.value = current;
  $("judge").textContent = `judge: ${data.judge.engine} ${data.judge.model}` +
    (data.judge.loaded ? " (warm)" : " (loads on the first judge call)");
  return data;
}

async function openFile(name) {
  const { ok, data } = await api(`api/file?name=${encodeURIComponent(name)}`);
  if (!ok) { status(data.error, "error"); return; }
  current = name;
  $("file").value = name;
  $("editor").value = savedText = data.text;
  $("draft-note").hidden = data.draft === null;
  $("load-draft").onclick = () => { $("editor").value = data.draft; $("draft-note").hidden = true; check(); };
  check();
}

// ---- check: lint, then preview and calibrate ---------------------------------------------------
async function check() {
  clearTimeout(debounce);  // this check covers the one typing scheduled
  const seq = ++checkSeq;
  const text = $("editor").value;
  status("checking…");
  const { ok, data } = await api("api/lint", { name: current, text });
  if (seq !== checkSeq) return;
  if (!ok) { status(data.error, "error"); return; }
  showLint(data);
  if (data.errors) {
    status(`lint: ${data.errors} error(s); fix them to see the judge`, "error");
    return;
  }
  if (!data.previewable) { status(`${data.method} file: lint passed (no judge preview)`, "ok"); return; }
  lastExamples = data.examples;
  fillExamples(data.examples);
  status("lint passed", "ok");
  preview(seq);
  calibrate();
}

function showLint(data) {
  marks = {};
  const list = $("findings");
  list.replaceChildren();
  for (const f of data.findings) {
    if (f.line && (!f.file || f.file === current)) marks[f.line] = marks[f.line] === "error" ? "error" : f.level;
    const item = el("li", { class: f.level }, `${f.file}:${f.line ?? "-"}: ${f.level}: ${f.message}`);
    if (f.line) item.onclick = () => gotoLine(f.line);
    list.append(item);
  }
  if (!data.findings.length) list.append(el("li", { class: "clean" }, "no findings: the rubric lints clean"));
  $("lint-summary").textContent = `${data.errors} error(s), ${data.warnings} warning(s)`;
  drawGutter();
}

function fillExamples(examples) {
  const sel = $("example");
  const keep = sel.value;
  sel.replaceChildren(...examples.map((ex) => el("option", { value: String(ex.index) },
    `${ex.index}: ${ex.prompt.slice(0, 60)} (better: ${ex.better}${ex.note ? ", " + ex.note : ""})`)));
  sel.append(el("option", { value: "custom" }, "type a prompt and response…"));
  sel.value = [...sel.options].some((o) => o.value === keep) ? keep : (examples.length ? "0" : "custom");
  $("custom").hidden = sel.value !== "custom";
}

async function preview(seq = checkSeq) {
  const body = { name: current, text: $("editor").value };
  const choice = $("example").value;
  if (choice === "custom") {
    body.prompt = $("prompt").value;
    body.response = $("response").value;
    if ($("response-b").value) body.response_b = $("response-b").value;
    if (!body.prompt.trim()) { $("inputs").replaceChildren(el("p", { class: "muted" }, "type a prompt")); return; }
  } else {
    body.example = Number(choice);
  }
  $("verdict-summary").textContent = "judging… (the first call loads the judge)";
  const { ok, data } = await api("api/preview", body);
  if (seq !== checkSeq) return;
  if (!ok) {
    $("verdict-summary").textContent = "";
    $("inputs").replaceChildren(el("p", { class: "message" }, data.error));
    $("verdict").replaceChildren();
    return;
  }
  $("inputs").replaceChildren(...(data.inputs.length ? data.inputs.map((x, i) => el("details", i ? {} : { open: "" },
    el("summary", {}, x.title), el("pre", { class: "input" }, x.text)))
    : [el("p", { class: "muted" }, `${data.method} rubric: no judge model, no judge input`)]));
  $("verdict-summary").textContent = !methods[data.method].needs_judge ? `${data.method}: no judge model` :
    `${data.method}; ${data.judged} of ${data.requests} judge input(s) sent to the engine` +
    (data.judged < data.requests ? ", the rest from the cache" : "");
  showVerdict(data);
  loadState();
}

// how each method's verdict row is drawn, by the method's `view` (api/state): one column per
// response for the score views, a table for pairwise and likelihood
const VIEWS = {
  distribution: (row, column) => row.details.forEach((d, i) => {
    const t = el("table");
    for (const [s, p] of Object.entries(d.distribution || {})) {
      t.append(el("tr", {}, el("td", {}, s), el("td", {}, fmt(p, 3)),
        el("td", {}, el("span", { class: "bar", style: `width:${Math.round(160 * p)}px` }))));
    }
    column(el("h3", {}, `response ${i}: expected score ${fmt(row.scores[i])}` +
      (d.mass !== undefined ? ` (mass ${fmt(d.mass)})` : "")), ...(d.error ? [el("p", { class: "message" }, d.error)] : []), t);
  }),
  verdict: (row, column) => row.details.forEach((d, i) => column(
    el("h3", {}, `response ${i}: score ${row.scores[i] ?? "FAILED"} after ${d.attempts} attempt(s)`),
    el("pre", { class: "input" }, JSON.stringify(d.verdict ?? { error: d.error, raw: d.raw }, null, 2)))),
  comparisons: (row, column) => {
    const t = el("table", {}, el("tr", {}, ...["pair", "order 1: P(i better), i as A", "order 2: P(i better), i as B",
      "averaged", "position-consistent"].map((h) => el("th", {}, h))));
    for (const c of row.comparisons) {
      t.append(el("tr", {}, el("td", {}, `${c.i} vs ${c.j}`), el("td", {}, fmt(c.p_i_first, 3)),
        el("td", {}, fmt(c.p_i_second, 3)), el("td", {}, fmt(c.p, 3)),
        el("td", {}, c.p === null ? `failed: ${c.error}` : (c.consistent ? "yes" : "no (position bias)"))));
    }
    column(t);
  },
  likelihood: (row, column) => {
    const t = el("table", {}, el("tr", {}, ...["response", "score", "mean log-prob", "tokens", "neutral", "PMI"]
      .map((h) => el("th", {}, h))));
    row.details.forEach((d, i) => t.append(el("tr", {}, el("td", {}, i), el("td", {}, fmt(row.scores[i], 4)),
      el("td", {}, fmt(d.mean_logprob, 3)), el("td", {}, d.tokens ?? d.error ?? ""),
      el("td", {}, fmt(d.mean_logprob_neutral, 3)), el("td", {}, fmt(d.pmi, 3)))));
    column(t);
  },
  checks: (row, column) => row.details.forEach((d, i) => {
    const t = el("table");
    for (const c of d.checks || []) {
      const mark = c.passed === true ? "pass" : c.passed === false ? "fail" : "skip";
      t.append(el("tr", {}, el("td", { class: mark }, mark), el("td", {}, c.check), el("td", {}, `w=${c.weight}`),
        el("td", {}, c.why)));
    }
    column(el("h3", {}, `response ${i}: score ${fmt(row.scores[i], 3)}`), t);
  }),
};

function showVerdict(data) {
  const out = [];
  VIEWS[methods[data.method].view](data.row, (...nodes) => out.push(el("div", {}, ...nodes)));
  $("verdict").replaceChildren(el("div", { class: "cols" }, ...out),
    el("details", {}, el("summary", {}, "as `rlaif rubric preview` prints it"), el("pre", { class: "input" }, data.text)));
}

// ---- calibration (background job, polled) -----------------------------------------------------
async function calibrate() {
  if (!lastExamples.length) {
    $("cal-summary").textContent = "no labelled examples in this rubric";
    $("calibration").replaceChildren();
    return;
  }
  const { ok, data } = await api("api/calibrate", { name: current, text: $("editor").value });
  if (!ok) { $("calibration").replaceChildren(el("p", { class: "message" }, data.error)); return; }
  calJob = data.id;
  poll(data.id);
}

async function poll(id) {
  if (id !== calJob) return;
  const { ok, data } = await api(`api/jobs/${id}`);
  if (!ok || id !== calJob) return;
  const running = data.status === "running";
  $("cal-progress").hidden = !running;
  $("cal-bar").max = Math.max(1, data.total);
  $("cal-bar").value = data.done;
  $("cal-count").textContent = `${data.done}/${data.total} judge requests (${data.cached} from the cache)`;
  $("cal-summary").textContent = running ? "running…" : data.status;
  if (running) { setTimeout(() => poll(id), 400); return; }
  if (data.status === "error") $("calibration").replaceChildren(el("p", { class: "message" }, data.error));
  if (data.status === "done") showCalibration(data.result, data);
}

function showCalibration(r, job) {
  $("cal-summary").textContent = `${r.n} labelled pairs, judge ${r.judge}; ${job.total} judged, ${job.cached} from the cache`;
  const rows = [
    ["agreement with labels", pct(r.agreement) + (r.failures ? ` (${r.failures} failed)` : "")],
    ["position consistency", methods[r.method].pairwise ? pct(r.position_consistency) : "n/a (each response scored alone)"],
    ["one-order agreement", methods[r.method].pairwise ? pct(r.first_order_agreement) : "n/a"],
    ["corr(score, length)", `Pearson ${fmt(r.length_pearson)}, Spearman ${fmt(r.length_spearman)}`],
    ["prefers the longer response", `judge ${pct(r.judge_prefers_longer)}, labels ${pct(r.labels_prefer_longer)}`],
  ];
  const t = el("table", { id: "cal-table" }, ...rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
  const worst = el("table", {}, el("tr", {}, ...["worst disagreements", "label", "a", "b"].map((h) => el("th", {}, h))),
    ...r.worst.map((w) => el("tr", {}, el("td", {}, `[${w.id}] ${w.prompt}`), el("td", {}, w.better),
      el("td", {}, fmt(w.score_a)), el("td", {}, fmt(w.score_b)))));
  $("calibration").replaceChildren(t, ...(r.worst.length ? [worst] : []),
    el("details", {}, el("summary", {}, "as `rlaif rubric calibrate` prints it"), el("pre", { class: "input" }, r.text)));
}

// ---- save --------------------------------------------------------------------------------------
async function save(draft) {
  const { ok, data } = await api("api/save", { name: current, text: $("editor").value, draft });
  if (data.findings) showLint(data);
  if (!ok) { status(data.error, "error"); return; }
  if (!data.draft) $("editor").value = savedText = data.text;  // a criteria file comes back marked edited_by person
  status(data.draft ? `saved as draft ${data.saved} (fails lint; ${current} unchanged)`
    : `saved ${data.saved}` + (data.previous ? ` (previous version in ${data.previous})` : ""), data.draft ? "error" : "ok");
  loadState();  // a new file joins the list
}

// ---- wiring ------------------------------------------------------------------------------------
window.addEventListener("DOMContentLoaded", async () => {
  const ed = $("editor");
  ed.addEventListener("input", () => { drawGutter(); clearTimeout(debounce); debounce = setTimeout(check, 700); });
  ed.addEventListener("scroll", () => { $("gutter").scrollTop = ed.scrollTop; });
  ed.addEventListener("keydown", (e) => {
    if (e.key === "Tab") { e.preventDefault(); document.execCommand("insertText", false, "  "); }
  });
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "s") { e.preventDefault(); save(false); }
  });
  $("check").onclick = () => check();
  $("save").onclick = () => save(false);
  $("save-draft").onclick = () => save(true);
  $("file").onchange = () => {
    if (unsaved() && !confirm(`Discard the unsaved changes to ${current}?`)) { $("file").value = current; return; }
    openFile($("file").value);
  };
  window.addEventListener("beforeunload", (e) => { if (unsaved()) e.preventDefault(); });
  $("example").onchange = () => { $("custom").hidden = $("example").value !== "custom"; if ($("example").value !== "custom") preview(); };
  $("judge-custom").onclick = () => preview();
  $("cal-cancel").onclick = async () => { if (calJob) await api(`api/jobs/${calJob}/cancel`, {}); };
  const state = await loadState();
  if (state) openFile(state.start);
});
