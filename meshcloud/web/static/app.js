// meshcloud UI: live updates without a build step.
// Sections with data-frag are re-fetched (HTML fragments) when an event whose kind starts
// with one of their data-refresh-on prefixes arrives on the server-sent event stream.
"use strict";

function fmtTime(ms) {
  if (!ms) return "-";
  const d = new Date(Number(ms));
  const secs = Math.max(0, (Date.now() - d.getTime()) / 1000);
  const rel = secs < 60 ? Math.round(secs) + "s ago" : secs < 3600 ? Math.round(secs / 60) + "m ago"
    : secs < 86400 ? (secs / 3600).toFixed(1) + "h ago" : d.toLocaleString();
  return rel;
}

function renderTimes(root) {
  for (const el of (root || document).querySelectorAll("time[data-ms]")) {
    el.textContent = fmtTime(el.dataset.ms);
    el.title = el.dataset.ms ? new Date(Number(el.dataset.ms)).toISOString() : "";
  }
}

const pending = new Map();
async function refresh(section) {
  if (pending.get(section)) return;
  pending.set(section, true);
  try {
    const response = await fetch(section.dataset.frag, { credentials: "same-origin" });
    if (response.ok) {
      section.innerHTML = await response.text();
      renderTimes(section);
      section.dispatchEvent(new CustomEvent("refreshed", { bubbles: true }));
    }
  } catch (e) { /* the next event retries */ }
  finally { pending.set(section, false); }
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function eventItem(e) {
  const li = document.createElement("li");
  li.className = "event kind-" + e.kind.split(".")[0];
  li.dataset.kind = e.kind;
  const facts = Object.entries(e).filter(([k]) => !["kind", "at", "seq"].includes(k))
    .map(([k, v]) => {
      const s = typeof v === "string" && v.length >= 20 ? v.slice(0, 12) : v;
      return "<span>" + escapeHtml(k) + "=" + escapeHtml(s) + "</span>";
    }).join(" ");
  li.innerHTML = '<time data-ms="' + Number(e.at) + '"></time> <b>' + escapeHtml(e.kind) + "</b> <span class=\"facts\">" + facts + "</span>";
  return li;
}

function applyFilter() {
  const select = document.getElementById("event-filter");
  if (!select) return;
  const want = select.value;
  for (const li of document.querySelectorAll("#events .event")) {
    li.classList.toggle("hidden", want !== "" && !li.dataset.kind.startsWith(want));
  }
}

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/v1/events/stream");
  source.onopen = () => live && live.classList.add("on");
  source.onerror = () => live && live.classList.remove("on");
  source.onmessage = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (e) { return; }
    for (const section of document.querySelectorAll("[data-frag]")) {
      const prefixes = (section.dataset.refreshOn || "").split(" ").filter(Boolean);
      if (prefixes.length === 0 || prefixes.some(p => event.kind.startsWith(p))) refresh(section);
    }
    const list = document.querySelector("[data-live-events]");
    if (list) {
      const li = eventItem(event);
      list.prepend(li);
      renderTimes(li);
      applyFilter();
      while (list.children.length > 500) list.lastChild.remove();
    }
  };
}

// Forms marked data-api post JSON to the API and refresh the page's live sections.
async function submitApiForm(form, event) {
  event.preventDefault();
  const body = {};
  for (const [k, v] of new FormData(form).entries()) {
    if (v === "") continue;
    body[k] = form.elements[k] && form.elements[k].type === "number" ? Number(v) : v;
  }
  const box = form.querySelector(".error-box") || form.appendChild(Object.assign(document.createElement("div"), { className: "error-box", hidden: true }));
  box.hidden = true;
  const method = form.dataset.method || "POST";
  const response = await fetch(form.dataset.api, {
    method, credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Meshcloud-UI": "1" },
    body: method === "DELETE" ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let text = response.statusText;
    try { text = (await response.json()).error.message; } catch (e) { /* keep status text */ }
    box.textContent = text;
    box.hidden = false;
    return;
  }
  if (form.dataset.reset !== undefined) form.reset();
  for (const section of document.querySelectorAll("[data-frag]")) refresh(section);
}

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.dataset && form.dataset.api) submitApiForm(form, event);
});

document.addEventListener("DOMContentLoaded", () => {
  renderTimes();
  const select = document.getElementById("event-filter");
  if (select) select.addEventListener("change", applyFilter);
  connect();
  setInterval(() => renderTimes(), 5000);
});
