"""The status page's HTML, CSS and JavaScript, and its favicon, as constants.

A Python module rather than package data: nothing to declare in setup.py, and no build
step. The page loads nothing but itself, `/favicon.ico`, `/status.json` and the discovery
routes (its Content-Security-Policy enforces that); data is put into the DOM with
`textContent` / `setAttribute` only, never parsed as HTML.
"""

FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<rect width="16" height="16" rx="3" fill="#1b2b3a"/>'
    '<path d="M4 4h8v2H9v6H7V6H4z" fill="#ff7300"/></svg>\n'
)

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1b1b1b; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .3em .5em; border-bottom: 1px solid #ddd; vertical-align: top; }
th { background: #eef1f4; font-weight: 600; }
code, pre, .mono { font-family: ui-monospace, monospace; font-size: 12px; }
td { white-space: nowrap; } td.wrap { white-space: normal; word-break: break-all; }
.muted { color: #666; } .empty { color: #666; font-style: italic; }
.bad { color: #b00020; } .good { color: #0a7d28; }
progress { width: 14em; vertical-align: middle; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; margin: 0; }
dt { font-weight: 600; } dd { margin: 0; }
.builder label { display: inline-block; margin: 0 1.2em .6em 0; vertical-align: top; }
.builder select { display: block; min-width: 10em; }
.out { background: #fff; border: 1px solid #ccc; padding: .4em .6em; margin: .2em 0 .6em; white-space: pre-wrap;
  word-break: break-all; }
.note { font-size: 12px; color: #555; max-width: 60em; }
"""

_BODY = """
<h1>talos-images</h1>
<div class="muted">server time <span id="server-time">?</span> &middot;
  <span id="conn" class="muted">connecting&hellip;</span></div>

<h2>Image factory</h2>
<dl id="factory">
  <dt>base URL</dt><dd><code id="f-base">?</code></dd>
  <dt>latest (last known)</dt><dd id="f-latest">?</dd>
  <dt>versions known</dt><dd id="f-versions">?</dd>
  <dt>last metadata call</dt><dd id="f-health">?</dd>
</dl>

<h2>Downloads in progress</h2>
<p id="downloads-empty" class="empty">none</p>
<table id="downloads" hidden><thead><tr><th>image</th><th>state</th><th>progress</th><th>bytes</th>
  <th>rate</th><th>ETA</th><th>followers</th><th>elapsed</th></tr></thead><tbody></tbody></table>

<h2>Cached images <span id="cache-summary" class="muted"></span></h2>
<p id="entries-empty" class="empty">none</p>
<table id="entries" hidden><thead><tr><th>URL path</th><th>schematic</th><th>size</th><th>age</th>
  <th>last access</th><th>sha256</th></tr></thead><tbody></tbody></table>

<h2>URL builder</h2>
<div class="builder">
  <label>version <select id="b-version"><option value="latest">latest</option></select></label>
  <label>arch <select id="b-arch"></select></label>
  <label>platform <select id="b-platform"></select></label>
  <label>extensions (Ctrl/Cmd-click for several) <select id="b-extensions" multiple size="8"></select></label>
  <label>overlay <select id="b-overlay"><option value="">(none)</option></select></label>
  <div id="b-status" class="note"></div>
  <div>image <button type="button" data-copy="out-image">copy</button></div>
  <div id="out-image" class="out mono"></div>
  <div>checksum (<code>.sha256</code>) <button type="button" data-copy="out-sha256">copy</button></div>
  <div id="out-sha256" class="out mono"></div>
  <div>PXE (iPXE script served by this server) <button type="button" data-copy="out-pxe">copy</button></div>
  <div id="out-pxe" class="out mono"></div>
  <div id="pxe-note" class="note"></div>
  <div>metal3 BareMetalHost <button type="button" data-copy="out-metal3">copy</button></div>
  <pre id="out-metal3" class="out"></pre>
  <div class="note">Default extensions configured on the server are added to every image.
    <code>latest</code> moves when a new Talos release appears; pin a version for hosts.</div>
</div>
"""

_JS = r"""
"use strict";
const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;
let lastDoc = null;
const catalog = { version: null, exts: new Map(), overlays: new Set() };  // full name -> URL name
let versionsDoc = null;

function fmtBytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}
function fmtDur(s) {
  if (s === null || s === undefined) return "?";
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor(s % 3600 / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor(s % 86400 / 3600) + "h";
}
function fmtTime(t) { return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z"; }
function cell(row, i, text, title) {
  const c = row.cells[i];
  if (c.textContent !== text) c.textContent = text;
  if (title !== undefined) c.title = title;
  return c;
}
function newRow(n) {
  const tr = document.createElement("tr");
  for (let i = 0; i < n; i++) tr.appendChild(document.createElement("td"));
  return tr;
}

// Rows are keyed and updated in place, so a row (and its progress bar) survives a poll.
function syncRows(table, empty, items, keyOf, make, update) {
  const tbody = table.tBodies[0];
  const old = new Map();
  for (const r of tbody.rows) old.set(r.dataset.key, r);
  let prev = null;
  for (const item of items) {
    const key = keyOf(item);
    let row = old.get(key);
    if (row) old.delete(key); else { row = make(item); row.dataset.key = key; }
    update(row, item);
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (row !== want) tbody.insertBefore(row, want);
    prev = row;
  }
  for (const r of old.values()) r.remove();
  table.hidden = items.length === 0;
  empty.hidden = items.length > 0;
}

function makeDownload() {
  const tr = newRow(8);
  tr.cells[0].className = "wrap";
  tr.cells[0].append(document.createElement("code"), " ", document.createElement("span"));
  tr.cells[0].lastChild.className = "muted";
  const bar = document.createElement("progress");
  bar.className = "bar";
  tr.cells[2].appendChild(bar);
  return tr;
}
function updateDownload(row, d) {
  row.cells[0].firstChild.textContent = d.url_path;
  row.cells[0].lastChild.textContent = "schematic " + d.schematic.slice(0, 12) + "\u2026";
  row.cells[0].title = "schematic " + d.schematic;
  cell(row, 1, d.state);
  const bar = row.cells[2].firstChild;
  bar.dataset.bytes = String(d.bytes);
  if (d.size) { bar.max = d.size; bar.value = d.bytes; bar.title = Math.round(100 * d.fraction) + "%"; }
  else { bar.removeAttribute("value"); bar.removeAttribute("max"); bar.title = "final size not known yet"; }
  cell(row, 3, fmtBytes(d.bytes) + " / " + (d.size ? fmtBytes(d.size) : "?"),
       fmtBytes(d.compressed_bytes) + " compressed received");
  cell(row, 4, fmtBytes(d.rate) + "/s");
  cell(row, 5, d.eta === null ? "?" : fmtDur(d.eta));
  cell(row, 6, String(d.followers));
  cell(row, 7, fmtDur(d.elapsed));
}

function makeEntry() {
  const tr = newRow(6);
  tr.cells[0].appendChild(document.createElement("code"));
  tr.cells[0].className = "wrap";
  tr.cells[5].className = "wrap mono";
  tr.cells[1].className = "mono";
  return tr;
}
function updateEntry(row, e) {
  const code = row.cells[0].firstChild;
  code.textContent = e.url_path !== null ? e.url_path :
    "(extensions not recorded: " + e.version + "/" + e.arch + "/" + e.platform + ")";
  cell(row, 1, e.schematic.slice(0, 12) + "\u2026", e.schematic);
  cell(row, 2, fmtBytes(e.size), e.size + " bytes, " + fmtBytes(e.disk_usage) + " on disk");
  cell(row, 3, fmtDur(e.age), "created " + fmtTime(e.created));
  cell(row, 4, fmtDur(e.idle) + " ago", fmtTime(e.last_access));
  cell(row, 5, e.sha256);
}

function renderFactory(f) {
  $("f-base").textContent = f.base_url;
  $("f-latest").textContent = f.latest || "not known yet (no versions fetched)";
  $("f-versions").textContent = String(f.versions_known);
  const h = $("f-health");
  if (!f.health) { h.textContent = "not reported by the server"; h.className = "muted"; }
  else {
    h.textContent = (f.health.ok ? "ok" : "failed: " + (f.health.error || "?")) +
      (f.health.at ? " at " + fmtTime(f.health.at) : "");
    h.className = f.health.ok ? "good" : "bad";
  }
}

function fillOptions(select, values, label) {
  const chosen = new Set([...select.selectedOptions].map((o) => o.value));
  select.replaceChildren(...values.map((v) => {
    const o = new Option(label ? label(v) : v, v);
    o.selected = chosen.has(v);
    return o;
  }));
  if (!select.multiple && select.selectedIndex < 0 && select.options.length) select.selectedIndex = 0;
}
function sameList(select, values) {
  return select.options.length === values.length && values.every((v, i) => select.options[i].value === v);
}

function render(doc) {
  lastDoc = doc;
  $("server-time").textContent = fmtTime(doc.server_time);
  renderFactory(doc.factory);
  syncRows($("downloads"), $("downloads-empty"), doc.downloads, (d) => d.key, makeDownload, updateDownload);
  syncRows($("entries"), $("entries-empty"), doc.entries,
           (e) => [e.version, e.arch, e.schematic, e.platform].join("/"), makeEntry, updateEntry);
  $("cache-summary").textContent = "(" + doc.cache.count + (doc.cache.count === 1 ? " image, " : " images, ") +
    fmtBytes(doc.cache.disk_usage) + " on disk" +
    (doc.cache.max_size ? " of " + fmtBytes(doc.cache.max_size) : "") + ")";
  for (const [id, values] of [["b-arch", doc.arches], ["b-platform", doc.platforms]]) {
    if (!sameList($(id), values)) fillOptions($(id), values);
  }
  updateBuilder();  // the PXE URL's schematic comes from the cached entries
}

async function poll() {
  let doc = null;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 10 * POLL_MS);  // a hung answer must not stop polling
  try {
    const r = await fetch("/status.json", { cache: "no-store", signal: abort.signal });
    if (!r.ok) throw new Error("HTTP " + r.status);
    doc = await r.json();
    $("conn").textContent = "live";
    $("conn").className = "good";
  } catch (e) {
    $("conn").textContent = "cannot reach the server (" + (e.message || e) + "); retrying";
    $("conn").className = "bad";
  }
  clearTimeout(timer);
  // render's own errors reach the console (the browser test fails on them); polling goes on
  try { if (doc) render(doc); } finally { setTimeout(poll, document.hidden ? 5 * POLL_MS : POLL_MS); }
}

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || "HTTP " + r.status);
  return body;
}

async function loadVersions() {
  try {
    versionsDoc = await getJSON("/images/talos/versions");
    const values = ["latest", ...versionsDoc.versions.slice().reverse()];
    fillOptions($("b-version"), values,
                (v) => v === "latest" ? "latest (" + (versionsDoc.latest || "?") + ")" : v);
  } catch (e) {
    $("b-status").textContent = "versions unavailable: " + e.message;
  }
  await loadCatalog();
}

async function loadCatalog() {
  const version = $("b-version").value;
  $("b-status").textContent = "loading the catalog of " + version + "\u2026";
  try {
    const [exts, ovs] = await Promise.all([getJSON("/images/talos/" + version + "/extensions"),
                                           getJSON("/images/talos/" + version + "/overlays")]);
    if ($("b-version").value !== version) return;  // superseded by a newer choice
    // the short name where it is unambiguous: shorter URLs, same image
    const count = new Map();
    for (const e of exts.extensions) count.set(e.short, (count.get(e.short) || 0) + 1);
    catalog.version = exts.version;
    catalog.exts = new Map(exts.extensions.map((e) => [e.name, count.get(e.short) === 1 ? e.short : e.name]));
    catalog.overlays = new Set(ovs.overlays.map((o) => o.name));
    fillOptions($("b-extensions"), [...catalog.exts.keys()], (n) => catalog.exts.get(n));
    fillOptions($("b-overlay"), ["", ...catalog.overlays], (n) => n || "(none)");
    $("b-status").textContent = "catalog of " + exts.version + ": " + exts.extensions.length + " extensions, " +
      ovs.overlays.length + " overlays";
  } catch (e) {
    $("b-status").textContent = "catalog of " + version + " unavailable: " + e.message;
  }
  updateBuilder();
}

function urlName(n) { return encodeURIComponent(n).replace(/%2F/g, "/"); }

function updateBuilder() {
  const version = $("b-version").value, arch = $("b-arch").value, platform = $("b-platform").value;
  const exts = [...$("b-extensions").selectedOptions].map((o) => o.value);
  const overlay = $("b-overlay").value;
  const query = [];
  if (exts.length) query.push("extensions=" + exts.map((n) => urlName(catalog.exts.get(n) || n)).join(","));
  if (overlay) query.push("overlay=" + urlName(overlay));
  const q = query.length ? "?" + query.join("&") : "";
  const base = location.origin + "/images/talos/" + version + "/" + arch + "/" + platform + ".raw";
  const image = base + q, sha = base + ".sha256" + q;
  const concrete = version === "latest" ? (versionsDoc && versionsDoc.latest) || catalog.version : version;
  // the schematic ID is known here only for an image already cached (the server computes it)
  const sorted = exts.slice().sort().join(",");
  const hit = (lastDoc ? lastDoc.entries : []).find((e) => e.version === concrete && e.arch === arch &&
    e.platform === platform && (e.overlay || "") === overlay && e.extensions.slice().sort().join(",") === sorted);
  const set = (id, text) => { if ($(id).textContent !== text) $(id).textContent = text; };
  set("out-image", image);
  set("out-sha256", sha);
  set("out-pxe", location.origin + "/pxe/" + (hit ? hit.schematic : "<schematic-id>") + "/" + (concrete || "<version>") +
      "/" + platform + "-" + arch);
  set("pxe-note", hit ? "schematic ID of the cached image (default extensions included)." :
      "<schematic-id> is the X-Talos-Schematic header of the image's response; it is filled in here once the " +
      "image is cached. (A HEAD of an image that is not cached starts its download.)");
  set("out-metal3", "# merge into the BareMetalHost (metal3.io/v1alpha1)\nspec:\n  image:\n" +
      "    url: \"" + image + "\"\n    checksum: \"" + sha + "\"\n    checksumType: sha256\n    format: raw\n");
}

async function copy(id, button) {
  const text = $(id).textContent;
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "copied";
  } catch (e) {  // no clipboard API outside a secure context: select the text instead
    const range = document.createRange();
    range.selectNodeContents($(id));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    button.textContent = "selected: press Ctrl+C";
  }
  setTimeout(() => { button.textContent = "copy"; }, 2000);
}

$("b-version").addEventListener("change", loadCatalog);
for (const id of ["b-arch", "b-platform", "b-extensions", "b-overlay"]) {
  $(id).addEventListener("change", () => updateBuilder());
}
for (const b of document.querySelectorAll("button[data-copy]")) {
  b.addEventListener("click", () => copy(b.dataset.copy, b));
}
poll();
loadVersions();
"""

# the CSP keeps the page honest: nothing but this origin, inline script/style of its own
PAGE_HTML = (
    "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
    "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'self'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src 'self'; connect-src 'self'\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<title>talos-images</title>\n<link rel=\"icon\" href=\"/favicon.ico\" type=\"image/svg+xml\">\n"
    f"<style>{_CSS}</style>\n</head><body>{_BODY}<script>{_JS}</script>\n</body></html>\n"
)
