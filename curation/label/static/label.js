// The labelling page: every string from the data goes into the DOM through textContent, never innerHTML.
"use strict";

const token = new URLSearchParams(location.search).get("token");
let items = [];
let state = { total: 0, labelled: 0, mine: {}, agreement: {} };
let annotator = "";
let current = 0;
let queue = Promise.resolve();  // key presses act in order, none is dropped while one is saving

const $ = (id) => document.getElementById(id);

function url(path, params = {}) {
  const u = new URL(path, location.href);
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  if (token) u.searchParams.set("token", token);
  return u.pathname + u.search;
}

async function call(path, body) {
  const opts = body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(url(path, body === undefined && annotator ? { annotator } : {}), opts);
  const data = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

function text(el, value) { el.textContent = value == null ? "" : String(value); }

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) { const td = document.createElement("td"); text(td, c); tr.appendChild(td); }
  return tr;
}

function pct(x) { return x == null ? "n/a" : `${Math.round(100 * x)}%`; }

function show(i) {
  if (!items.length) return;
  current = Math.max(0, Math.min(items.length - 1, i));
  const it = items[current];
  const img = $("preview");
  $("no-preview").hidden = true;
  img.hidden = false;
  img.src = url(`preview/${it.index}`);
  text($("name"), it.name);
  img.title = it.source_uri;
  const bits = [it.media_type, it.size, it.status];
  if (it.reject_reasons.length) bits.push(`rejected for ${it.reject_reasons.join(", ")}`);
  if (it.media_type === "video") bits.push(`motion tier ${it.motion_tier == null ? "n/a" : it.motion_tier}`);
  text($("meta"), `#${current + 1} · ` + bits.filter(Boolean).join(" · "));
  text($("where"), it.where);
  const tb = $("scores").querySelector("tbody");
  tb.replaceChildren(...it.scores.map(([k, v]) => row([k, v])));
  $("ocr-box").hidden = !it.ocr_text; text($("ocr"), it.ocr_text);
  $("caption-box").hidden = !it.caption; text($("caption"), it.caption);
  const mine = state.mine[it.sample_id];
  for (const b of $("buttons").querySelectorAll("button")) {
    b.classList.toggle("current", !!mine && mine.score === Number(b.dataset.score));
  }
  $("note").value = mine ? mine.note : "";
  for (const j of [current + 1, current + 2]) {  // warm the next previews while this one is judged
    if (j < items.length) { const p = new Image(); p.src = url(`preview/${items[j].index}`); }
  }
}

function render() {
  text($("progress"), `${state.labelled} / ${state.total}`);
  text($("who"), annotator ? `annotator: ${annotator}` : "");
  const ag = state.agreement || {};
  $("annotators").hidden = !Object.keys(ag.annotators || {}).length;
  $("annotators").querySelector("tbody").replaceChildren(
    ...Object.entries(ag.annotators || {}).map(([name, n]) => row([name, n])));
  const pairs = ag.pairs || [];
  $("pairs").hidden = !pairs.length;
  $("pairs").querySelector("tbody").replaceChildren(
    ...pairs.map((p) => row([`${p.a} · ${p.b}`, p.n, pct(p.exact), pct(p.within_1),
                             p.kappa == null ? "n/a" : p.kappa.toFixed(2)])));
  text($("agreement-note"), pairs.length ? "κ: Cohen's kappa, quadratic weights (1 = full agreement, 0 = chance)"
       : "agreement shows once two annotators have labelled the same rows");
}

function flash(msg) {
  text($("saved"), msg);
  clearTimeout(flash.t);
  flash.t = setTimeout(() => text($("saved"), ""), 1500);
}

function labelCurrent(score) { queue = queue.then(() => doLabel(score)); }
function undo() { queue = queue.then(doUndo); }

async function doLabel(score) {
  if (!items.length) return;
  try {
    const it = items[current];
    state = await call("api/label", { annotator, sample_id: it.sample_id, score, note: $("note").value });
    text($("error"), "");
    flash(`saved ${score} for #${current + 1}`);
    render();
    show(current + 1 < items.length ? current + 1 : current);
  } catch (e) {
    text($("error"), `not saved: ${e.message}`);
  }
}

async function doUndo() {
  try {
    const got = await call("api/undo", { annotator });
    state = got;
    render();
    if (got.undone == null) { flash("nothing to undo"); return; }
    const i = items.findIndex((it) => it.sample_id === got.undone);
    flash(`undone #${i + 1}`);
    show(i >= 0 ? i : current);
  } catch (e) {
    text($("error"), `undo failed: ${e.message}`);
  }
}

function firstUnlabelled() {
  const i = items.findIndex((it) => !(it.sample_id in state.mine));
  return i < 0 ? 0 : i;
}

async function begin() {
  const name = $("annotator").value.trim();
  if (!/^[\p{L}\p{N}_ .@-]{1,64}$/u.test(name)) {  // the server's rule (Python \w: letters, digits, _)
    text($("start-error"), "1-64 letters, digits, spaces or _ . @ -");
    return;
  }
  annotator = name;
  try { localStorage.setItem("curation-label-annotator", name); } catch (e) { /* private mode */ }
  try {
    items = (await call("api/items")).items;
    state = await call("api/state");
  } catch (e) {
    text($("start-error"), `cannot load the annotation set: ${e.message}`);
    return;
  }
  $("start").hidden = true;
  $("work").hidden = false;
  render();
  show(firstUnlabelled());
}

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const t = ev.target;
  if (t === $("note")) {
    if (ev.key === "Enter" || ev.key === "Escape") { ev.preventDefault(); t.blur(); }
    return;
  }
  if (t === $("annotator")) {
    if (ev.key === "Enter") { ev.preventDefault(); begin(); }
    return;
  }
  if ($("work").hidden) return;
  if (/^[1-5]$/.test(ev.key)) { ev.preventDefault(); labelCurrent(Number(ev.key)); }
  else if (ev.key === "u") { ev.preventDefault(); undo(); }
  else if (ev.key === "ArrowRight") { ev.preventDefault(); show(current + 1); }
  else if (ev.key === "ArrowLeft") { ev.preventDefault(); show(current - 1); }
  else if (ev.key === "n") { ev.preventDefault(); $("note").focus(); }
});

document.addEventListener("DOMContentLoaded", () => {
  $("begin").addEventListener("click", begin);
  $("preview").addEventListener("error", () => { $("preview").hidden = true; $("no-preview").hidden = false; });
  for (const b of $("buttons").querySelectorAll("button")) {
    b.addEventListener("click", () => { b.blur(); labelCurrent(Number(b.dataset.score)); });
  }
  try { $("annotator").value = localStorage.getItem("curation-label-annotator") || ""; } catch (e) { /* */ }
  $("annotator").focus();
});
