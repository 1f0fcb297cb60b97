// rlaif review: one item at a time; the judge's view only after the person answers. el, api and $
// come from common/page.js; the API is documented in rlaif/review/app.py.
"use strict";

const KEYS = { a: "A", b: "B", t: "tie", x: "both_bad", s: "skip" };
const NAMES = { A: "A is better", B: "B is better", tie: "tie", both_bad: "both bad", skip: "skip" };
let view = null;   // the item shown: the server's answer to /api/item or /api/label
let busy = false;

function status(text, kind = "") { $("status").textContent = text; $("status").className = kind; }
const fmt = (x, digits = 3) => (x === null || x === undefined ? "n/a" : Number(x).toFixed(digits));

function showSummary(s) {
  $("progress").textContent = `${s.answered} of ${s.items} answered`;
  let text = s.compared ? `agreement with the judge ${s.agreed}/${s.compared} (${Math.round(100 * s.agreement)}%)`
                        : "agreement with the judge: no A/B answer yet";
  const a = s.stats && s.stats.agreement;
  if (a && a.value !== null && a.interval) {
    text += ` · all reviewers${a.weighted ? ", weighted" : ""}: ${fmt(a.value, 2)} [${fmt(a.interval[0], 2)}, ${fmt(a.interval[1], 2)}]`;
  }
  $("summary").textContent = text;
}

function promptText(prompt) {
  return prompt.map((m) => (prompt.length > 1 ? `${m.role}: ` : "") + m.content).join("\n\n");
}

function render(v) {
  view = v;
  const it = v.item;
  $("item-id").textContent = `item ${v.index + 1} of ${v.items} · ${it.item}`;
  $("prompt").textContent = promptText(it.prompt);
  $("response-a").textContent = it.responses[0];
  $("response-b").textContent = it.responses[1];
  for (const b of document.querySelectorAll("#buttons button")) {
    b.classList.toggle("picked", !!v.label && v.label.answer === b.dataset.answer);
  }
  $("note").value = v.label ? v.label.note : "";
  $("side-a").className = "side"; $("side-b").className = "side";
  $("judge").hidden = !v.label;
  if (v.label) renderJudge(v);
}

function renderJudge(v) {
  const j = v.judge, [first, second] = v.item.show;
  const side = (c) => (c === first ? "A" : c === second ? "B" : "neither");
  if (v.label.preferred !== null) $(v.label.preferred === first ? "side-a" : "side-b").classList.add("chosen");
  if (j.preferred !== null) $(j.preferred === first ? "side-a" : "side-b").classList.add("judge");
  const you = `You: ${NAMES[v.label.answer]}.`;
  const judge = j.preferred === null ? "The judge scored them equal." :
    `The judge prefers ${side(j.preferred)} by a margin of ${fmt(j.margin)}.`;
  const verdict = $("verdict");
  verdict.replaceChildren(you + " " + judge + " ");
  if (v.agrees === true) verdict.append(el("span", { class: "agree" }, "You agree."));
  else if (v.agrees === false) verdict.append(el("span", { class: "disagree" }, "You disagree."));
  verdict.append(` (${v.in_dataset ? "in" : "not in"} the dataset; stratum ${v.stratum}, weight ${fmt(v.weight, 2)}; ` +
                 "green frame: your pick, orange: the judge's)");
  const pos = (c) => v.candidates.indexOf(c);
  const row = (cells, tag = "td") => el("tr", {}, ...cells.map((c) => el(tag, {}, c)));
  const table = $("scores");
  table.replaceChildren(row(["", "A", "B"], "th"),
    row([`combined (${j.rubric}, ${j.judge})`, fmt(j.scores[pos(first)]), fmt(j.scores[pos(second)])]));
  for (const [rubric, reasons] of Object.entries(j.reasons || {})) {
    table.append(row([rubric, reasons[pos(first)] ?? "", reasons[pos(second)] ?? ""]));
  }
  $("flags").replaceChildren(...(j.flags.length ? j.flags : ["no flags"]).map((f) => el("li", {}, {
    truncated: "a response was cut off at max_tokens", near_noise: "inside the judge's noise margin",
    position_inconsistent: "the judge's two orders disagreed (position-inconsistent)" }[f] || f)));
}

async function load(query) {
  const r = await api(`api/item?${query}`);
  if (!r.ok) { status(r.data.error, "error"); return; }
  if (r.data.done) {
    if (!view) await load("index=0");
    status(`All ${r.data.items} items answered. Use ← to look back; \`rlaif review report\` gives the figures.`);
    return;
  }
  status("");
  render(r.data);
}

async function answer(a) {
  if (!view || busy) return;
  busy = true;
  try {
    const r = await api("api/label", { item: view.item.item, answer: a, note: $("note").value, shown: view.item.show });
    if (!r.ok) { status(r.data.error, "error"); return; }
    render(r.data);
    showSummary(r.data.summary);
    status(`saved: ${NAMES[a]}. Enter or → for the next item.`);
  } finally { busy = false; }
}

async function next() {
  if (!view) return;
  if (!view.label) { status("answer first (a, b, t, x or s)", "error"); return; }
  const st = await api("api/state");
  if (st.ok) showSummary(st.data.summary);
  if (view.index + 1 < view.items) await load(`index=${view.index + 1}`);
  else await load("next");
}

async function prev() { if (view && view.index > 0) await load(`index=${view.index - 1}`); }

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (document.activeElement === $("note")) {
    if (e.key === "Escape") $("note").blur();
    return;
  }
  const key = e.key.toLowerCase();
  if (KEYS[key]) { e.preventDefault(); answer(KEYS[key]); }
  else if (key === "n") { e.preventDefault(); $("note").focus(); }
  else if (e.key === "Enter" || e.key === "ArrowRight") { e.preventDefault(); next(); }
  else if (e.key === "ArrowLeft") { e.preventDefault(); prev(); }
});

for (const b of document.querySelectorAll("#buttons button")) b.onclick = () => answer(b.dataset.answer);
$("next").onclick = next;
$("prev").onclick = prev;

(async () => {
  const st = await api("api/state");
  if (!st.ok) { status(st.data.error, "error"); return; }
  $("run").textContent = `${st.data.run.split("/").pop()} · reviewer ${st.data.reviewer}`;
  $("run").title = st.data.run;
  showSummary(st.data.summary);
  await load("next");
})();
