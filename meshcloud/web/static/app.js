// meshcloud UI: the small script that keeps server-rendered pages live. No build step.
//
// * Sections with data-frag re-fetch their HTML fragment when an event whose kind starts
//   with one of their data-refresh-on prefixes arrives on the server-sent event stream,
//   and every data-poll seconds (state that reaches this node through replicated tables
//   raises no event here). A section the user is typing in, or holds a button armed for
//   its confirming second tap, waits until they are done.
// * Forms with data-api and buttons with data-call send JSON to the agent API.
// * Uploads are XMLHttpRequest PUTs (upload progress events drive the bars); logs stream
//   with fetch and a body reader.
"use strict";

// --- small helpers ---------------------------------------------------------------------------

function $(selector, root) { return (root || document).querySelector(selector); }
function $$(selector, root) { return Array.from((root || document).querySelectorAll(selector)); }

function fmtTime(ms, absolute) {
  if (!ms) return "-";
  const d = new Date(Number(ms));
  if (absolute) return d.toLocaleString();
  const secs = Math.max(0, (Date.now() - d.getTime()) / 1000);
  if (secs < 5) return "just now";
  if (secs < 60) return Math.round(secs) + "s ago";
  if (secs < 3600) return Math.round(secs / 60) + "m ago";
  if (secs < 86400) return (secs / 3600).toFixed(1) + "h ago";
  return d.toLocaleDateString();
}

function renderTimes(root) {
  for (const el of $$("time[data-ms]", root)) {
    if (!el.dataset.ms) continue;
    el.textContent = fmtTime(el.dataset.ms, el.hasAttribute("data-absolute"));
    el.title = new Date(Number(el.dataset.ms)).toLocaleString();
  }
}

const BYTE_FACTS = ["size", "bytes", "deleted_bytes"];

function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 || n >= 100 ? Math.round(n) + " " + units[i] : n.toFixed(1) + " " + units[i];
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

let toastTimer = null;
function toast(text, kind) {
  const el = $("#toast");
  if (!el) return;
  el.textContent = text;
  el.className = "toast " + (kind || "");
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) {
      const problems = body.error.problems ? ": " + body.error.problems.join("; ") : "";
      return body.error.message + problems;
    }
  } catch (e) { /* not JSON */ }
  return response.status + " " + response.statusText;
}

// --- live sections ---------------------------------------------------------------------------

const busy = new WeakMap();      // section -> a refresh is in flight
const deferred = new WeakSet();  // sections waiting for the user to leave them

let pressed = null;  // where a pointer is down: a swap between its press and release loses the click

function userIsIn(section) {
  // typing in a field, half-way through a two-tap confirmation, or pressing a button:
  // a swap would undo it
  if (section.querySelector('[data-armed="1"]')) return true;
  if (pressed && section.contains(pressed)) return true;
  const active = document.activeElement;
  return active && section.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName);
}

function statesOf(section) {
  const out = new Map();
  for (const el of $$("[data-node][data-state]", section)) out.set(el.dataset.node, el.dataset.state);
  return out;
}

async function refresh(section) {
  if (busy.get(section)) { section.dataset.again = "1"; return; }
  if (userIsIn(section)) { deferred.add(section); return; }
  busy.set(section, true);
  try {
    const response = await fetch(section.dataset.frag, { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) { toast("Logged out: run `meshcloud ui` for a new link", "bad"); return; }
    if (!response.ok) return;
    const html = await response.text();
    if (userIsIn(section)) { deferred.add(section); return; }
    const before = statesOf(section);
    section.innerHTML = html;
    renderTimes(section);
    for (const el of $$("[data-node][data-state]", section)) {
      const old = before.get(el.dataset.node);
      if (old !== undefined && old !== el.dataset.state) el.classList.add("changed");
    }
  } catch (e) {
    /* the agent is unreachable for a moment: the next event or poll retries */
  } finally {
    busy.set(section, false);
    if (section.dataset.again) { delete section.dataset.again; setTimeout(() => refresh(section), 150); }
  }
}

function refreshAll() { for (const section of $$("[data-frag]")) refresh(section); }

function resumeDeferred() {
  setTimeout(() => {
    for (const section of $$("[data-frag]")) {
      if (deferred.has(section) && !userIsIn(section)) { deferred.delete(section); refresh(section); }
    }
  }, 0);
}

document.addEventListener("focusout", resumeDeferred);
document.addEventListener("pointerdown", (event) => { pressed = event.target; }, true);
for (const kind of ["pointerup", "pointercancel"]) {
  // after the click event of the same release has run (it may arm a button)
  document.addEventListener(kind, () => { setTimeout(() => { pressed = null; resumeDeferred(); }, 0); }, true);
}

function startPolling() {
  for (const section of $$("[data-frag][data-poll]")) {
    const seconds = Number(section.dataset.poll);
    if (seconds > 0) setInterval(() => { if (!document.hidden) refresh(section); }, seconds * 1000);
  }
}

// --- the event stream and the Events page ----------------------------------------------------

function eventItem(e) {
  const li = document.createElement("li");
  const family = String(e.kind).split(".")[0];
  li.className = "event fam-" + family + " fresh";
  li.dataset.kind = e.kind;
  li.dataset.peer = e.peer || "";
  const hidden = ["kind", "at", "seq", "node"];
  const facts = Object.entries(e).filter(([k]) => !hidden.includes(k)).map(([k, v]) => {
    let text = Array.isArray(v) ? v.join(", ") : String(v);
    if (/^[0-9a-f]{32,}$/.test(text)) text = text.slice(0, 8);
    if (BYTE_FACTS.includes(k) && Number.isInteger(v)) text = fmtBytes(v);
    if (text.length > 80) text = text.slice(0, 77) + "...";
    const value = k.endsWith("_at") && Number.isInteger(v)
      ? '<time data-ms="' + v + '" data-absolute></time>' : escapeHtml(text);
    return '<span title="' + escapeHtml(String(v)) + '"><em>' + escapeHtml(k) + "</em> " + value + "</span>";
  }).join("");
  li.innerHTML = '<span class="kind">' + escapeHtml(e.kind) + '</span><time data-ms="' + Number(e.at) +
    '"></time><span class="facts">' + facts + '</span><span class="from" title="seen by ' +
    escapeHtml(e.node || "") + '">' + escapeHtml(String(e.node || "").slice(0, 8)) + "</span>";
  return li;
}

// Repeated news of one member (its capacity or incarnation moved) folds into the newest line
// with a count, instead of flooding the feed.
const FOLDED_KINDS = ["member.updated"];

function foldInto(first, event) {
  if (!first || !FOLDED_KINDS.includes(event.kind) || first.dataset.kind !== event.kind ||
      first.dataset.peer !== (event.peer || "")) return false;
  const count = Number(first.dataset.repeat || 1) + 1;
  first.dataset.repeat = String(count);
  let badge = first.querySelector(".repeat");
  if (!badge) {
    badge = document.createElement("span");
    badge.className = "repeat";
    first.querySelector(".kind").after(badge);
  }
  badge.textContent = "\u00d7" + count;
  const time = first.querySelector(":scope > time");
  if (time) { time.dataset.ms = String(Number(event.at)); renderTimes(first); }
  return true;
}

const eventFilter = { family: "", text: "" };

function applyEventFilter() {
  const list = $("#events");
  if (!list) return;
  let shown = 0;
  for (const li of list.children) {
    const okFamily = !eventFilter.family || li.dataset.kind.split(".")[0] === eventFilter.family;
    const okText = !eventFilter.text || li.textContent.toLowerCase().includes(eventFilter.text);
    li.hidden = !(okFamily && okText);
    if (!li.hidden) shown++;
  }
  const count = $("#event-count");
  if (count) count.textContent = shown === list.children.length ? shown + " events" : shown + " of " + list.children.length + " events";
  const empty = $("#events-empty");
  if (empty) empty.hidden = list.children.length > 0;
}

function setupEventFilters() {
  const bar = $("#event-filters");
  if (!bar) return;
  bar.addEventListener("click", (ev) => {
    const chip = ev.target.closest(".chip");
    if (!chip) return;
    for (const c of $$(".chip", bar)) c.classList.toggle("on", c === chip);
    eventFilter.family = chip.dataset.family;
    applyEventFilter();
  });
  const search = $("#event-search");
  search.addEventListener("input", () => { eventFilter.text = search.value.trim().toLowerCase(); applyEventFilter(); });
  applyEventFilter();
}

function connect() {
  const live = $("#live");
  const source = new EventSource("/v1/events/stream");
  source.onopen = () => { if (live) { live.classList.add("on"); live.title = "live: connected"; } };
  source.onerror = () => { if (live) { live.classList.remove("on"); live.title = "reconnecting..."; } };
  source.onmessage = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (e) { return; }
    for (const section of $$("[data-frag]")) {
      const prefixes = (section.dataset.refreshOn || "").split(" ").filter(Boolean);
      if (prefixes.some(p => event.kind.startsWith(p))) refresh(section);
    }
    const list = $("[data-live-events]");
    if (list && foldInto(list.firstElementChild, event)) {
      applyEventFilter();
    } else if (list) {
      const li = eventItem(event);
      list.prepend(li);
      renderTimes(li);
      while (list.children.length > 500) list.lastChild.remove();
      applyEventFilter();
    }
  };
  window.addEventListener("pagehide", () => source.close());
}

// --- changes through the API -----------------------------------------------------------------

function splitCommand(text) {
  // words separated by spaces; single or double quotes keep spaces inside a word
  const words = [];
  const re = /"([^"]*)"|'([^']*)'|(\S+)/g;
  let m;
  while ((m = re.exec(text)) !== null) words.push(m[1] !== undefined ? m[1] : m[2] !== undefined ? m[2] : m[3]);
  return words;
}

const builders = {
  // the Run form as the workload API's spec
  workload(data) {
    const spec = { name: data.name, replicas: Number(data.replicas || 1) };
    if (data.image) spec.image = data.image;
    if (data.command) spec.command = splitCommand(data.command);
    if (data.runtime) spec.constraints = { runtime: data.runtime };
    if (data.ports) spec.ports = data.ports.split(/[\s,]+/).filter(Boolean);
    return { spec };
  },
  // the access key form as the storage API's grant
  key(data) {
    return { name: data.name, buckets: { [data.bucket || "*"]: data.allow || "read,write" },
             create_buckets: data.create_buckets === "1" };
  },
};

function formData(form) {
  const data = {};
  for (const [k, v] of new FormData(form).entries()) {
    if (typeof v !== "string" || v === "") continue;
    const input = form.elements[k];
    data[k] = input && input.type === "number" ? Number(v) : v;
  }
  return data;
}

function showReply(selector, reply) {
  const box = $(selector);
  if (!box) return;
  for (const el of $$("[data-field]", box)) el.textContent = reply[el.dataset.field] ?? "";
  box.hidden = false;
  box.scrollIntoView({ block: "nearest" });
}

function afterChange(then) {
  if (!then || then === "refresh") { refreshAll(); return; }
  if (then === "reload") { location.reload(); return; }
  if (then.startsWith("goto:")) { location.assign(then.slice(5)); }
}

async function callApi(method, url, body) {
  const response = await fetch(url, {
    method, credentials: "same-origin",
    headers: body === undefined ? { "X-Meshcloud-UI": "1" } : { "Content-Type": "application/json", "X-Meshcloud-UI": "1" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw new Error(await errorText(response));
  const text = await response.text();
  try { return text ? JSON.parse(text) : {}; } catch (e) { return {}; }
}

async function submitApiForm(form) {
  const box = form.querySelector(".error-box") || form.appendChild(Object.assign(document.createElement("div"), { className: "error-box", hidden: true }));
  box.hidden = true;
  const data = formData(form);
  const body = form.dataset.build ? builders[form.dataset.build](data) : data;
  const button = form.querySelector("button[type=submit]");
  if (button) button.disabled = true;
  try {
    const reply = await callApi(form.dataset.method || "POST", form.dataset.api, body);
    if (form.dataset.show) showReply(form.dataset.show, reply);
    if (form.dataset.reset !== undefined) form.reset();
    toast("Done", "good");
    afterChange(form.dataset.then);
  } catch (e) {
    box.textContent = e.message;
    box.hidden = false;
  } finally {
    if (button) button.disabled = false;
  }
}

async function clickCall(button) {
  if (button.dataset.confirm !== undefined && button.dataset.armed !== "1") {
    // two steps instead of a dialog: the first tap arms the button for a few seconds
    button.dataset.armed = "1";
    button.dataset.label = button.textContent;
    button.textContent = "Sure? " + button.textContent;
    button.classList.add("armed");
    button.title = button.dataset.confirm;
    setTimeout(() => {
      if (button.dataset.armed === "1") {
        button.dataset.armed = "";
        button.textContent = button.dataset.label;
        button.classList.remove("armed");
        resumeDeferred();
      }
    }, 4000);
    return;
  }
  button.dataset.armed = "";
  const [method, url] = button.dataset.call.split(" ");
  let body;
  if (button.dataset.body) body = JSON.parse(button.dataset.body);
  else if (method !== "DELETE") body = {};
  button.disabled = true;
  try {
    await callApi(method, url, body);
    toast("Done", "good");
    afterChange(button.dataset.then);
  } catch (e) {
    toast(e.message, "bad");
    button.disabled = false;
    if (button.dataset.label) { button.textContent = button.dataset.label; button.classList.remove("armed"); }
    resumeDeferred();
  }
}

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.dataset && form.dataset.api) { event.preventDefault(); submitApiForm(form); }
});

document.addEventListener("click", (event) => {
  const call = event.target.closest("[data-call]");
  if (call) { event.preventDefault(); clickCall(call); return; }
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    const source = $(copy.dataset.copy);
    const text = source ? (source.value !== undefined ? source.value : source.textContent) : "";
    if (source && source.select) source.select();
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(() => toast("Copied", "good"), () => toast("Select the text and copy it", ""));
    } else {
      toast("Selected: copy it with your keyboard or menu", "");
    }
    return;
  }
  const hide = event.target.closest("[data-hide]");
  if (hide) {
    const target = $(hide.dataset.hide);
    if (target) { target.hidden = true; for (const el of $$("[data-field]", target)) el.textContent = ""; }
  }
});

// --- uploads ---------------------------------------------------------------------------------

function keyPath(key) { return key.split("/").map(encodeURIComponent).join("/"); }

function uploadOne(form, file) {
  const key = (form.dataset.prefix || "") + file.name;
  const item = document.createElement("li");
  item.className = "upload-item";
  item.dataset.key = key;
  item.innerHTML = '<span class="upload-name">' + escapeHtml(file.name) + '</span><span class="progress"><span></span></span><span class="upload-state">0%</span>';
  $("#uploads", form).prepend(item);
  const bar = $(".progress > span", item);
  const state = $(".upload-state", item);
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", "/v1/storage/objects/" + encodeURIComponent(form.dataset.bucket) + "/" + keyPath(key));
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.setRequestHeader("X-Meshcloud-UI", "1");
    xhr.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      const percent = Math.round(100 * e.loaded / e.total);
      bar.style.width = percent + "%";
      state.textContent = percent < 100 ? percent + "%" : "storing...";
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        bar.style.width = "100%";
        item.classList.add("done");
        state.textContent = "stored";
      } else {
        item.classList.add("failed");
        let text = xhr.status + " " + xhr.statusText;
        try { text = JSON.parse(xhr.responseText).error.message; } catch (e) { /* keep status */ }
        state.textContent = text;
      }
      resolve();
    };
    xhr.onerror = () => { item.classList.add("failed"); state.textContent = "network error"; resolve(); };
    xhr.send(file);
  });
}

function setupUploads() {
  for (const form of $$("form[data-upload]")) {
    const input = $("input[type=file]", form);
    form.addEventListener("submit", (e) => e.preventDefault());
    input.addEventListener("change", async () => {
      const files = Array.from(input.files);
      input.value = "";
      for (const file of files) {
        await uploadOne(form, file);
        refreshAll();
      }
    });
  }
}

// --- logs ------------------------------------------------------------------------------------

function setupLogs() {
  const out = $("pre[data-logs]");
  if (!out) return;
  const select = $("#log-replica");
  const pause = $("#log-pause");
  const state = $("#log-state");
  let controller = null;
  let paused = false;
  let pending = "";
  const MAX_CHARS = 400000;

  function append(text) {
    if (paused) { pending += text; return; }
    const atBottom = out.scrollTop + out.clientHeight >= out.scrollHeight - 8;
    out.append(document.createTextNode(text));
    if (out.textContent.length > MAX_CHARS) out.textContent = out.textContent.slice(-MAX_CHARS / 2);
    if (atBottom) out.scrollTop = out.scrollHeight;
  }

  async function stream() {
    if (controller) controller.abort();
    controller = new AbortController();
    const mine = controller;
    out.textContent = "";
    const params = new URLSearchParams({ follow: "1", tail: out.dataset.tail || "200" });
    if (select && select.value !== "") params.set("replica", select.value);
    state.textContent = "connecting...";
    try {
      const response = await fetch(out.dataset.logs + "?" + params, { signal: mine.signal, credentials: "same-origin" });
      if (!response.ok) { state.textContent = await errorText(response); return; }
      state.textContent = "following";
      out.classList.add("following");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        append(decoder.decode(value, { stream: true }));
      }
      state.textContent = "stream ended";
    } catch (e) {
      if (e.name !== "AbortError") state.textContent = "disconnected";
    } finally {
      out.classList.remove("following");
    }
  }

  if (select) select.addEventListener("change", stream);
  if (pause) pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    if (!paused && pending) { const text = pending; pending = ""; append(text); }
  });
  const clear = $("#log-clear");
  if (clear) clear.addEventListener("click", () => { out.textContent = ""; });
  window.addEventListener("pagehide", () => { if (controller) controller.abort(); });
  stream();
}

// --- start -----------------------------------------------------------------------------------

function showActiveNav() {
  // on a phone the navigation is one scrolling row: bring the current page into it
  const nav = $(".side");
  const active = $(".side a.active");
  if (nav && active && nav.scrollWidth > nav.clientWidth) {
    nav.scrollLeft = Math.max(0, active.offsetLeft - (nav.clientWidth - active.offsetWidth) / 2);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  renderTimes();
  showActiveNav();
  setupEventFilters();
  setupUploads();
  setupLogs();
  connect();
  startPolling();
  setInterval(() => renderTimes(), 5000);
});
