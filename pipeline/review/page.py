"""The review page: one HTML document with its CSS and JavaScript (no build step, no external requests).

Every dataset string reaches the DOM through `textContent`, never as HTML.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>opens2s-data review</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; }
  header { background: #24324a; color: #fff; padding: 8px 14px; display: flex; gap: 14px; align-items: center;
           flex-wrap: wrap; }
  header label { font-size: 12px; } header input, header select { margin-left: 4px; }
  header input[type=number] { width: 64px; }
  #progress { flex: 1; min-width: 160px; } progress { width: 100%; }
  main { display: flex; height: calc(100vh - 92px); }
  #queue { width: 260px; overflow-y: auto; border-right: 1px solid #ccc; margin: 0; padding: 0; list-style: none; }
  #queue li { padding: 5px 8px; cursor: pointer; border-bottom: 1px solid #eee; font-size: 12px; }
  #queue li.current { background: #dde8ff; }
  #queue li[data-decision=accept]::before { content: "\2714  "; color: #080; }
  #queue li[data-decision=reject]::before { content: "\2718  "; color: #b00; }
  #queue li .st { color: #777; }
  #sample { flex: 1; overflow-y: auto; padding: 10px 16px; }
  .rejected-badge { background: #b00; color: #fff; padding: 1px 6px; border-radius: 3px; font-size: 12px; }
  table.turns { border-collapse: collapse; width: 100%; }
  table.turns td, table.turns th { border-bottom: 1px solid #ddd; padding: 5px; vertical-align: top; text-align: left; }
  .mismatch { color: #b00; font-weight: bold; } .asr { color: #555; font-style: italic; }
  #judge { position: sticky; bottom: 0; background: #f6f6f6; border-top: 1px solid #ccc; padding: 8px 16px; }
  #reasons label { margin-right: 10px; white-space: nowrap; }
  #comment { width: 100%; height: 40px; }
  button { padding: 4px 12px; } #accept { background: #cfc; } #reject { background: #fcc; }
  #status { margin-left: 10px; } .error { color: #b00; }
  kbd { border: 1px solid #aaa; border-radius: 3px; padding: 0 3px; font-size: 11px; background: #fff; color: #222; }
  .keys { font-size: 12px; color: #555; margin-top: 4px; }
</style>
</head>
<body>
<header>
  <strong id="title">review</strong>
  <label>annotator <input id="annotator" size="10" autocomplete="off"></label>
  <label>size <input id="size" type="number" min="1"></label>
  <label>seed <input id="seed" type="number"></label>
  <label>emotion <select id="f-emotion"><option value="">all</option></select></label>
  <label>speaker <select id="f-speaker"><option value="">all</option></select></label>
  <label>items <select id="f-status"></select></label>
  <button id="draw">draw queue</button>
  <div id="progress"><span id="progress-text"></span><br><progress id="progress-bar" value="0" max="1"></progress></div>
</header>
<main>
  <ul id="queue"></ul>
  <div id="sample-wrap" style="flex:1; display:flex; flex-direction:column; overflow:hidden">
    <div id="sample"><p>Loading...</p></div>
    <div id="judge">
      <div id="reasons"></div>
      <textarea id="comment" placeholder="comment (optional)"></textarea>
      <button id="accept">accept</button> <button id="reject">reject</button>
      <button id="prev">previous</button> <button id="next">next</button>
      <span id="status"></span>
      <div class="keys"><kbd>a</kbd> accept <kbd>r</kbd> reject (with the ticked reasons)
        <kbd>1</kbd>-<kbd>8</kbd> toggle a reason <kbd>j</kbd>/<kbd>k</kbd> next/previous
        <kbd>p</kbd> play the next turn <kbd>space</kbd> pause/resume <kbd>c</kbd> comment
        <kbd>Esc</kbd> leave the comment box</div>
    </div>
  </div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const state = { meta: null, queue: [], pos: 0, sample: null, playing: -1 };
const store = window.localStorage;

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}
function fmt(v, digits) { return v === null || v === undefined ? "-" : Number(v).toFixed(digits); }
function setStatus(text, isError) { $("status").textContent = text; $("status").className = isError ? "error" : ""; }

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}
function annotator() { return $("annotator").value.trim(); }
function params() {
  return { size: $("size").value, seed: $("seed").value, emotion: $("f-emotion").value,
           speaker: $("f-speaker").value, status: $("f-status").value };
}

async function init() {
  const meta = state.meta = await api("/api/meta");
  document.title = "review: " + meta.dataset;
  $("title").textContent = meta.dataset + (meta.complete ? "" : " (build not complete)");
  $("annotator").value = store.getItem("annotator") || meta.annotator || "";
  for (const e of meta.emotions) $("f-emotion").append(el("option", e, { value: e }));
  for (const s of meta.speakers) $("f-speaker").append(el("option", s, { value: s }));
  for (const s of meta.statuses) {
    const n = s in meta.counts ? " (" + meta.counts[s] + ")" : "";
    $("f-status").append(el("option", s + n, { value: s }));
  }
  const saved = JSON.parse(store.getItem("queue-params") || "null") ||
    { size: meta.size, seed: meta.seed, emotion: "", speaker: "", status: "kept" };
  $("size").value = saved.size; $("seed").value = saved.seed; $("f-emotion").value = saved.emotion;
  $("f-speaker").value = saved.speaker; $("f-status").value = saved.status;
  meta.reason_tags.forEach((tag, i) => {
    const box = el("input", null, { type: "checkbox", value: tag, id: "reason-" + tag });
    const label = el("label", null, { for: "reason-" + tag });
    label.append(box, " " + (i + 1) + " " + tag.replace(/_/g, " "));
    $("reasons").append(label);
  });
  await draw(Number(store.getItem("queue-pos") || 0));
}

async function draw(pos) {
  const p = params();
  store.setItem("queue-params", JSON.stringify(p));
  const q = await api("/api/queue?" + new URLSearchParams({ ...p, annotator: annotator() }));
  state.queue = q.items;
  const list = $("queue");
  list.replaceChildren();
  q.items.forEach((item, i) => {
    const li = el("li", null, { "data-id": item.id, "data-status": item.status });
    li.append(el("span", item.id), el("br"), el("span", item.emotion + " / " + item.speaker_id +
      (item.status === "rejected" ? " (rejected by the pipeline)" : ""), { class: "st" }));
    li.onclick = () => show(i);
    list.append(li);
  });
  markJudgements(q.items);
  if (!q.items.length) {
    $("sample").replaceChildren(el("p", "No sample matches these filters (" + q.available + " available)."));
    state.sample = null;
    updateProgress();
    return;
  }
  await show(Math.min(pos || 0, q.items.length - 1));
}

function markJudgements(items) {
  for (const item of items) {
    const li = document.querySelector('#queue li[data-id="' + CSS.escape(item.id) + '"]');
    if (item.judgement) li.setAttribute("data-decision", item.judgement.decision);
    else li.removeAttribute("data-decision");
  }
  updateProgress();
}
function updateProgress() {
  const done = state.queue.filter((i) => i.judgement).length;
  $("progress-text").textContent = "judged " + done + " of " + state.queue.length + " in this queue" +
    (state.queue.length ? " (sample " + (state.pos + 1) + ")" : "");
  $("progress-bar").max = Math.max(state.queue.length, 1); $("progress-bar").value = done;
}

async function show(pos) {
  state.pos = pos; state.playing = -1;
  store.setItem("queue-pos", String(pos));
  document.querySelectorAll("#queue li").forEach((li, i) => li.classList.toggle("current", i === pos));
  document.querySelector("#queue li.current")?.scrollIntoView({ block: "nearest" });
  const ticket = state.ticket = (state.ticket || 0) + 1;  // a later click wins over a slower earlier answer
  $("sample").dataset.loading = "1";
  const s = await api("/api/sample/" + encodeURIComponent(state.queue[pos].id) +
    "?" + new URLSearchParams({ annotator: annotator() }));
  if (ticket !== state.ticket) return;
  state.sample = s;
  render(s);
  delete $("sample").dataset.loading;
  updateProgress();
}

function render(s) {
  const box = $("sample");
  box.replaceChildren();
  const h = el("h2", s.id + "  ");
  if (s.status === "rejected") h.append(el("span", "rejected by the pipeline", { class: "rejected-badge" }));
  const intensity = s.intensity ? " (intensity " + s.intensity + ")" : "";
  box.append(h, el("p", "stratum: " + s.stratum + intensity + ", shard " + s.shard));
  if (s.scenario) {
    const sc = s.scenario, p = sc.persona;
    box.append(el("p", "Topic: " + sc.topic), el("p", "Situation: " + sc.situation),
      el("p", "Persona: " + p.name + ", " + p.age_group + " " + p.gender + ", " + p.occupation + ", " + p.style +
        "; target emotion " + sc.emotion + " (" + sc.intensity + "), speaker " + sc.speaker_id +
        ", assistant " + sc.assistant_speaker_id));
  } else {
    box.append(el("p", "The pipeline dropped this dialogue: its scenario, text and audio are not in the output; " +
      "below is what the rejects/ rows recorded."));
  }
  if (s.turns.length) {
    const table = el("table", null, { class: "turns" });
    const head = el("tr");
    for (const c of ["turn", "text / ASR", "audio", "emotion target / measured", "WER"]) head.append(el("th", c));
    table.append(head);
    s.turns.forEach((t, i) => {
      const tr = el("tr", null, { "data-turn": t.turn_id });
      tr.append(el("td", (i + 1) + " " + t.role + " " + t.speaker_id));
      const text = el("td"); text.append(el("div", t.text), el("div", "ASR: " + (t.asr_text || "-"), { class: "asr" }));
      const ac = el("td");
      const player = { controls: "", preload: "none", src: t.audio_url, "data-turn": t.turn_id };
      if (t.audio_url) ac.append(el("audio", null, player));
      else ac.append(el("em", "no audio (text-only build)"));
      ac.append(el("div", fmt(t.duration_s, 2) + " s"));
      const measured = t.emotion_measured || (t.role === "assistant" ? "(not checked)" : "-");
      const score = t.emotion_score !== null ? " " + fmt(t.emotion_score, 2) : "";
      const emo = el("td", t.emotion + " (" + t.intensity + ") / " + measured + score, { class: "emotion" });
      if (t.emotion_measured && t.emotion_measured !== t.emotion) emo.classList.add("mismatch");
      tr.append(text, ac, emo, el("td", fmt(t.wer, 3)));
      table.append(tr);
    });
    box.append(table);
  }
  if (s.rejects.length) {
    box.append(el("h3", "Pipeline rejects for this dialogue"));
    const table = el("table", null, { class: "turns rejects" });
    const head = el("tr");
    const columns = ["level", "turn", "stage", "reason", "detail", "WER", "duration", "emotion target / measured",
                     "ASR"];
    for (const c of columns) head.append(el("th", c));
    table.append(head);
    for (const r of s.rejects) {
      const tr = el("tr");
      const emotion = r.emotion_target + " / " + (r.emotion_measured || "-");
      const values = [r.level, r.turn_id || "-", r.stage, r.reason, r.detail, fmt(r.wer, 3), fmt(r.duration_s, 2),
                      emotion, r.asr_text || "-"];
      for (const v of values) tr.append(el("td", v));
      table.append(tr);
    }
    box.append(table);
  }
  const j = s.judgement;
  document.querySelectorAll("#reasons input").forEach((b) => { b.checked = !!j && j.reasons.includes(b.value); });
  $("comment").value = j ? j.comment : "";
  const why = j && j.reasons.length ? " (" + j.reasons.join(", ") + ")" : "";
  setStatus(j ? "your judgement: " + j.decision + why + " at " + j.updated_at : "not judged yet");
}

async function judge(decision) {
  if (!state.sample) return;
  if (!annotator()) { setStatus("enter your annotator name first", true); $("annotator").focus(); return; }
  const reasons = [...document.querySelectorAll("#reasons input:checked")].map((b) => b.value);
  if (decision === "reject" && !reasons.length) {
    setStatus("tick at least one reason (keys 1-8) to reject", true);
    return;
  }
  try {
    const body = { annotator: annotator(), sample_id: state.sample.id, decision, reasons, comment: $("comment").value };
    const saved = await api("/api/judgements", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    state.queue[state.pos].judgement = saved;
    markJudgements([state.queue[state.pos]]);
    setStatus("saved: " + decision);
    const next = state.queue.findIndex((item, i) => i > state.pos && !item.judgement);
    if (next >= 0) await show(next);
  } catch (err) { setStatus("not saved: " + err.message, true); }
}

function playNext() {
  const players = [...document.querySelectorAll("#sample audio")];
  if (!players.length) return;
  players.forEach((a) => a.pause());
  state.playing = (state.playing + 1) % players.length;
  players[state.playing].play();
}
function togglePause() {
  const a = [...document.querySelectorAll("#sample audio")][state.playing];
  if (a) { if (a.paused) a.play(); else a.pause(); }
}

$("accept").onclick = () => judge("accept");
$("reject").onclick = () => judge("reject");
$("next").onclick = () => state.pos + 1 < state.queue.length && show(state.pos + 1);
$("prev").onclick = () => state.pos > 0 && show(state.pos - 1);
$("draw").onclick = () => draw(0);
$("annotator").onchange = () => { store.setItem("annotator", annotator()); draw(state.pos); };
document.addEventListener("keydown", (ev) => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName) &&
                 document.activeElement.type !== "checkbox";
  if (ev.key === "Escape") { document.activeElement.blur(); return; }
  if (typing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const tags = state.meta ? state.meta.reason_tags : [];
  if (ev.key === "a") judge("accept");
  else if (ev.key === "r") judge("reject");
  else if (ev.key === "j" || ev.key === "ArrowDown") $("next").click();
  else if (ev.key === "k" || ev.key === "ArrowUp") $("prev").click();
  else if (ev.key === "p") playNext();
  else if (ev.key === " ") togglePause();
  else if (ev.key === "c") $("comment").focus();
  else if (/^[1-9]$/.test(ev.key) && Number(ev.key) <= tags.length) {
    const box = $("reason-" + tags[Number(ev.key) - 1]); box.checked = !box.checked;
  } else return;
  ev.preventDefault();
});
init().catch((err) => setStatus("could not load: " + err.message, true));
</script>
</body>
</html>
"""
