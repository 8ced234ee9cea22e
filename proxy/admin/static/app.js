// imagegate admin page: plain JavaScript, no build step, no third-party code.
// The admin key is kept in sessionStorage (gone when the tab closes) and sent as a Bearer token.
// Every value from the server is inserted as text (textContent), never as HTML.
"use strict";

const KEY = "imagegate.adminKey";
const $ = (selector) => document.querySelector(selector);
let nextCursor = null;
const objectUrls = [];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY);
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${key}`, ...(options.body ? { "Content-Type": "application/json" } : {}) },
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response;
}

async function imageElement(path, alt) {
  try {
    const blob = await (await api(path)).blob();
    const url = URL.createObjectURL(blob);
    objectUrls.push(url);
    return el("img", { src: url, alt });
  } catch (error) {
    return el("p", { class: "redacted" }, `image not available: ${error.message}`);
  }
}

function isRedacted(value) {
  return value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length === 1 && "$redacted" in value;
}

function display(value) {
  if (value === null || value === undefined) return "";
  if (isRedacted(value)) return el("span", { class: "redacted" }, `[redacted: ${value.$redacted.rule}]`);
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function time(ts) {
  return typeof ts === "number" ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) : "";
}

// -- sign in ---------------------------------------------------------------------------------------

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    await api("/v1/audit/records?limit=1");
  } catch (error) {
    sessionStorage.removeItem(KEY);
    showError(error.status === 403 ? "This key is not an admin key." : `Sign-in failed: ${error.message}`);
    return;
  }
  showError("");
  $("#key").value = "";
  $("#key").hidden = true;
  $("#logout").hidden = false;
  $("#login button[type=submit]").hidden = true;
  $("#whoami").textContent = "signed in";
  $("#tabs").hidden = false;
  showTab("records");
  await search();
}

function signOut() {
  sessionStorage.removeItem(KEY);
  location.reload();
}

function showTab(name) {
  for (const section of ["records", "review"]) $(`#${section}`).hidden = section !== name;
  for (const button of document.querySelectorAll("#tabs button")) button.classList.toggle("active", button.dataset.tab === name);
  if (name === "review") loadReview();
}

// -- the audit trail -------------------------------------------------------------------------------

async function search(more = false) {
  const params = new URLSearchParams();
  for (const [name, value] of new FormData($("#filters"))) if (value) params.set(name, value);
  params.set("limit", "50");
  if (more && nextCursor) params.set("cursor", nextCursor);
  try {
    const page = await (await api(`/v1/audit/records?${params}`)).json();
    const body = $("#record-table tbody");
    if (!more) body.replaceChildren();
    for (const record of page.data) {
      const decisions = (record.decisions || []).filter((d) => d.action !== "skipped")
        .map((d) => `${d.stage}:${d.action}${d.category ? ":" + d.category : ""}`).join(" ");
      body.append(el("tr", { "data-id": record.id, onclick: () => openRecord(record.id) },
        el("td", {}, time(record.time)), el("td", {}, el("code", {}, record.id)), el("td", {}, display(record.end_user)),
        el("td", {}, display(record.model)), el("td", { class: `outcome-${record.outcome}` }, record.outcome || ""),
        el("td", {}, decisions)));
    }
    nextCursor = page.next_cursor;
    $("#more").hidden = !nextCursor;
    showError(page.data.length || more ? "" : "No records match these filters.");
  } catch (error) {
    showError(error.message);
  }
}

async function openRecord(id) {
  let record;
  try {
    record = await (await api(`/v1/audit/records/${encodeURIComponent(id)}`)).json();
  } catch (error) {
    showError(error.message);
    return;
  }
  $("#detail").hidden = false;
  $("#detail-id").textContent = record.id;
  const fields = $("#detail-fields");
  fields.replaceChildren();
  for (const name of ["time", "tenant", "end_user", "key_id", "client_address", "route", "operation", "provider", "model",
    "size", "n", "quality", "status", "outcome", "prompt", "negative_prompt", "prompt_sha256", "cost_estimate_usd",
    "latency_ms", "policy_version", "request_id", "licence", "error", "review", "access"]) {
    if (!(name in record)) continue;
    fields.append(el("dt", {}, name), el("dd", { "data-field": name }, name === "time" ? time(record.time) + " UTC" : display(record[name])));
  }
  const decisions = $("#detail-decisions tbody");
  decisions.replaceChildren();
  for (const d of record.decisions || []) {
    decisions.append(el("tr", {}, el("td", {}, d.stage), el("td", {}, d.action), el("td", {}, d.category || ""),
      el("td", {}, d.score ?? ""), el("td", {}, d.image_index ?? ""), el("td", {}, d.reason || "")));
  }
  const images = $("#detail-images");
  images.replaceChildren();
  const retained = Array.isArray(record.retained_images) ? record.retained_images : [];
  for (const image of Array.isArray(record.images) ? record.images : []) {
    const card = el("div", { class: "image-card" },
      el("p", {}, `image ${image.index}: ${image.media_type}, ${image.bytes} bytes, ${image.released ? "released" : "withheld"}`),
      el("p", {}, el("code", {}, `sha256 ${image.sha256}`)),
      image.manifest_id ? el("p", {}, `C2PA manifest ${image.manifest_id}`) : null,
      image.verdict ? el("pre", {}, JSON.stringify(image.verdict, null, 1)) : null);
    const kept = retained.find((r) => r.index === image.index && r.asset);
    if (kept) card.prepend(await imageElement(`/v1/audit/records/${encodeURIComponent(record.id)}/images/${image.index}`, `image ${image.index}`));
    else card.append(el("p", { class: "redacted" }, isRedacted(record.retained_images) ? "image removed by retention" : "image not retained"));
    images.append(card);
  }
  if (!images.children.length) images.append(el("p", {}, "No images."));
  $("#detail-chain").textContent = JSON.stringify(record.chain || {}, null, 1);
  $("#detail").scrollIntoView();
}

// -- the review queue ------------------------------------------------------------------------------

async function loadReview() {
  const status = $("#review-status").value;
  const list = $("#review-items");
  list.replaceChildren();
  let page;
  try {
    page = await (await api(`/v1/review/items?status=${status}&limit=100`)).json();
  } catch (error) {
    showError(error.message);
    return;
  }
  if (!page.data.length) list.append(el("p", { id: "review-empty" }, `No ${status === "all" ? "" : status + " "}items.`));
  for (const item of page.data) {
    const note = el("textarea", { rows: "2", placeholder: "note (optional)" });
    const decide = (decision) => async () => {
      try {
        await api(`/v1/review/items/${encodeURIComponent(item.id)}`, { method: "POST", body: JSON.stringify({ decision, note: note.value }) });
        showError("");
        await loadReview();
      } catch (error) {
        showError(error.message);
      }
    };
    const verdicts = (item.verdicts || []).map((v) => `${v.stage}: ${v.action} ${v.category || ""} ${v.score ?? ""}`.trim());
    const card = el("div", { class: "review-card", "data-item": item.id },
      item.image_url ? await imageElement(item.image_url, `flagged image of ${item.audit_id}`) : el("p", { class: "redacted" }, "image removed by retention"),
      el("p", {}, `${time(item.created)} · ${item.model || ""} · user ${item.end_user || "-"}`),
      el("p", {}, "record ", el("a", { href: "#", onclick: (event) => { event.preventDefault(); showTab("records"); openRecord(item.audit_id); } }, item.audit_id)),
      el("ul", {}, ...verdicts.map((v) => el("li", {}, v))),
      el("p", { class: "status" }, `status: ${item.status}${item.note ? " (" + item.note + ")" : ""}`));
    if (item.status === "pending") {
      card.append(note, el("button", { type: "button", class: "approve", onclick: decide("approve") }, "Approve"),
        el("button", { type: "button", class: "reject", onclick: decide("reject") }, "Reject"));
    }
    list.append(card);
  }
}

// -- wiring ----------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#login").addEventListener("submit", (event) => { event.preventDefault(); signIn($("#key").value.trim()); });
  $("#logout").addEventListener("click", signOut);
  $("#filters").addEventListener("submit", (event) => { event.preventDefault(); $("#detail").hidden = true; search(); });
  $("#more").addEventListener("click", () => search(true));
  $("#review-status").addEventListener("change", loadReview);
  for (const button of document.querySelectorAll("#tabs button")) button.addEventListener("click", () => showTab(button.dataset.tab));
  const saved = sessionStorage.getItem(KEY);
  if (saved) signIn(saved);
});
