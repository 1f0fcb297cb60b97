// Shared by rlaif's local pages (rubric studio, review), served as common/page.js by both: building
// DOM nodes (texts always as text nodes, never parsed as HTML) and the JSON API call. The page's
// <script data-header="X-...-Token"> names the token header: rlaif/webgate.py wants every POST to
// carry it (the cookie alone is refused) with a JSON body.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token") || "";
const TOKEN_HEADER = document.currentScript.dataset.header;
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "style") node.style.cssText = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function api(path, body) {
  const opts = { headers: { [TOKEN_HEADER]: TOKEN } };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  let data;
  try { data = await r.json(); } catch (e) { data = { error: `${r.status} ${r.statusText}` }; }
  return { ok: r.ok, status: r.status, data };
}
