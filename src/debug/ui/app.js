// pilotfish's dashboard: plain JavaScript and SVG, no library, no network but pilotfish's
// own debug pages. Pages: #/graph (the service graph, live), #/proxies (proxy-status and
// each proxy's config dump), #/config (every object and error). It shows what the debug
// pages show, which never includes a key or a token.
"use strict";

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

// Outside loopback the debug pages need a bearer token: asked once, kept for the tab.
async function get(path) {
  const headers = {};
  const token = sessionStorage.getItem("pilotfish-token");
  if (token) headers["Authorization"] = "Bearer " + token;
  const r = await fetch(path, { headers });
  if (r.status === 401) {
    const t = prompt("This pilotfish's debug pages need its token (<state-dir>/debug-token):");
    if (t) { sessionStorage.setItem("pilotfish-token", t.trim()); return get(path); }
  }
  if (!r.ok) throw new Error(path + ": " + r.status + " " + (await r.text()));
  return r.json();
}

let timer = null;
function every(ms, f) { clearInterval(timer); f(); timer = setInterval(f, ms); }
function status(text, bad) { const s = $("#status"); s.textContent = text; s.className = "right" + (bad ? " err" : ""); }

// ---------------------------------------------------------------------------- graph

let windowSel = "1m";
let selected = null;
let lastGraph = null;
let lastConfig = null;

function colour(errorRate) {
  if (errorRate >= 0.05) return "var(--bad)";
  if (errorRate >= 0.01) return "var(--warn)";
  return "var(--ok)";
}

// Layers by longest path from the nodes nothing points at (cycles cut after N rounds),
// nodes spread evenly in their layer, ordered by name.
function layout(g, width, height) {
  const ids = g.nodes.map((n) => n.id);
  const layer = Object.fromEntries(ids.map((id) => [id, 0]));
  for (let round = 0; round < ids.length; round++) {
    let changed = false;
    for (const e of g.edges) {
      if (layer[e.target] < layer[e.source] + 1 && layer[e.source] + 1 < ids.length) {
        layer[e.target] = layer[e.source] + 1; changed = true;
      }
    }
    if (!changed) break;
  }
  const layers = {};
  for (const n of g.nodes) (layers[layer[n.id]] ||= []).push(n);
  const keys = Object.keys(layers).map(Number).sort((a, b) => a - b);
  const pos = {};
  keys.forEach((k, i) => {
    const col = layers[k].sort((a, b) => a.id.localeCompare(b.id));
    const x = 90 + (keys.length === 1 ? (width - 180) / 2 : (i * (width - 180)) / (keys.length - 1));
    col.forEach((n, j) => { pos[n.id] = { x, y: 40 + ((j + 0.5) * (height - 60)) / col.length }; });
  });
  return pos;
}

function label(n) { return n.kind === "service" ? n.name || n.id.replace("service:", "") : n.name; }

function drawGraph(g) {
  const svg = $("#svg");
  const width = svg.clientWidth || 800;
  const height = Math.max(420, 60 + 48 * Math.max(...Object.values(countPerLayer(g)), 1));
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.style.height = height + "px";
  const pos = layout(g, width, height);
  let out = `<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>`;
  for (const e of g.edges) {
    const a = pos[e.source], b = pos[e.target];
    if (!a || !b) continue;
    const short = Math.abs(b.x - a.x) < 260;
    const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2 + (short ? 30 : -8);
    const rate = e.requests_per_second >= 10 ? e.requests_per_second.toFixed(0) : e.requests_per_second.toFixed(2);
    const lat = e.p90_ms == null ? "" : `, p90 ${e.p90_ms.toFixed(1)} ms`;
    const tcp = e.protocols.includes("tcp") ? ` ${(e.bytes_sent + e.bytes_received)} B` : "";
    out += `<g class="edge" data-source="${esc(e.source)}" data-target="${esc(e.target)}">` +
      `<line x1="${a.x + 70}" y1="${a.y}" x2="${b.x - 70}" y2="${b.y}" stroke="${colour(e.error_rate)}" stroke-width="${1.5 + Math.min(4, Math.log10(1 + e.requests_per_second * 10))}" marker-end="url(#arrow)"/>` +
      `<text x="${mx}" y="${my}" text-anchor="middle">${rate} rps${lat}${e.error_rate > 0 ? `, ${(e.error_rate * 100).toFixed(1)}% err` : ""}${e.mtls_rate >= 1 ? " · mTLS" : ""}${tcp}</text></g>`;
  }
  for (const n of g.nodes) {
    const p = pos[n.id];
    out += `<g class="node ${n.kind}${selected === n.id ? " sel" : ""}" data-id="${esc(n.id)}" transform="translate(${p.x - 70},${p.y - 16})">` +
      `<rect width="140" height="32" rx="6"/><text x="70" y="14" text-anchor="middle">${esc(label(n)).slice(0, 22)}</text>` +
      `<text x="70" y="27" text-anchor="middle" class="muted">${esc(n.kind === "service" ? "service" : n.namespace + (n.version && n.version !== "unknown" ? " · " + n.version : ""))}</text></g>`;
  }
  svg.innerHTML = out;
  svg.querySelectorAll(".node").forEach((el) => el.addEventListener("click", () => { selected = el.dataset.id; drawGraph(lastGraph); panel(); }));
}

function countPerLayer(g) {
  const pos = {}; const c = {};
  for (const n of g.nodes) pos[n.id] = 0;
  for (const e of g.edges) if (pos[e.target] !== undefined) pos[e.target] = Math.max(pos[e.target], (pos[e.source] || 0) + 1);
  for (const id in pos) c[pos[id]] = (c[pos[id]] || 0) + 1;
  return c;
}

function edgeRows(edges, other) {
  if (!edges.length) return `<p class="muted">none</p>`;
  return `<table><tr><th>${other}</th><th>rps</th><th>errors</th><th>p50/p99 ms</th><th>mTLS</th></tr>` +
    edges.map((e) => `<tr><td>${esc(other === "from" ? e.source : e.target)}</td><td>${e.requests_per_second.toFixed(2)}</td>` +
      `<td style="color:${colour(e.error_rate)}">${(e.error_rate * 100).toFixed(1)}%</td>` +
      `<td>${e.p50_ms == null ? "-" : e.p50_ms.toFixed(1) + " / " + e.p99_ms.toFixed(1)}</td><td>${(e.mtls_rate * 100).toFixed(0)}%</td></tr>`).join("") + `</table>`;
}

// The config that applies to a node: for a service, the objects naming its host; for a
// workload, the policies of its namespace.
function configFor(node) {
  if (!lastConfig) return [];
  const short = node.kind === "service" ? node.name : node.name;
  return lastConfig.objects.filter((o) => {
    const spec = JSON.stringify(o.spec || {});
    if (node.kind === "service") {
      const host = node.id.replace("service:", "");
      return ["VirtualService", "DestinationRule", "ServiceEntry", "Service"].includes(o.kind) &&
        (spec.includes(`"${host}"`) || (o.namespace === node.namespace && (spec.includes(`"${short}"`) || o.name === short)));
    }
    return ["AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication", "Sidecar", "WorkloadEntry"].includes(o.kind) &&
      o.namespace === node.namespace;
  });
}

function panel() {
  const p = $("#panel");
  const g = lastGraph;
  const n = g && g.nodes.find((x) => x.id === selected);
  if (!n) { p.innerHTML = `<p class="muted">Click a node for its traffic and config.</p>`; return; }
  const objs = configFor(n);
  p.innerHTML = `<h3 id="panel-title">${esc(n.id)}</h3>` +
    `<h4>Inbound</h4>${edgeRows(g.edges.filter((e) => e.target === n.id), "from")}` +
    `<h4>Outbound</h4>${edgeRows(g.edges.filter((e) => e.source === n.id), "to")}` +
    `<h4>Config that applies</h4>` + (objs.length ? `<ul>${objs.map((o) => `<li>${esc(o.kind)} ${esc(o.namespace)}/${esc(o.name)} <span class="muted">${esc(o.file)}</span></li>`).join("")}</ul>` : `<p class="muted">none</p>`);
}

async function graphPage() {
  // A node can be chosen by link: #/graph?node=<id>&window=5m
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  if (params.get("node")) selected = params.get("node");
  if (["1m", "5m", "1h"].includes(params.get("window"))) windowSel = params.get("window");
  $("#main").innerHTML = `<p>Window: <select id="win"><option>1m</option><option>5m</option><option>1h</option></select>
    <span class="muted">edges: green &lt;1% errors, orange &lt;5%, red ≥5%; "mTLS": all requests mutual TLS; refreshed every 5 s</span></p>
    <div id="graph"><svg id="svg" xmlns="http://www.w3.org/2000/svg"></svg><div id="panel"></div></div>`;
  $("#win").value = windowSel;
  $("#win").onchange = (e) => { windowSel = e.target.value; refresh(); };
  const refresh = async () => {
    try {
      const [g, c] = await Promise.all([get("/debug/graphz?window=" + windowSel), get("/debug/configz")]);
      lastGraph = g; lastConfig = c;
      drawGraph(g); panel();
      status(`${g.nodes.length} nodes, ${g.edges.length} edges (${windowSel})`);
      document.body.dataset.loaded = "graph";
    } catch (e) { status(e.message, true); }
  };
  every(5000, refresh);
}

// ---------------------------------------------------------------------------- proxies

function syncState(t) {
  if (!t || !t.sent_version) return "NOT SENT";
  if (t.nacked_version && t.nacked_version === t.sent_version) return "NACKED";
  return t.sent_version === t.acked_version ? "SYNCED" : "STALE";
}

// The config objects a NACK's error names (by name, or by a host in a cluster name).
// A short host is the object's namespace's (`reviews` → `reviews.<ns>.svc.`).
function blamed(error, config) {
  if (!config || !error) return [];
  const fqdn = (h, ns) => (h.includes(".") ? h : `${h}.${ns}.svc.`);
  return config.objects.filter((o) => {
    const hosts = [o.spec && o.spec.host, ...((o.spec && o.spec.hosts) || [])].filter(Boolean);
    return hosts.some((h) => error.includes(fqdn(h, o.namespace))) || error.includes(`${o.kind} ${o.namespace}/${o.name}`);
  }).map((o) => `${o.kind} ${o.namespace}/${o.name}`);
}

async function proxiesPage() {
  $("#main").innerHTML = `<table id="proxies"></table><h3 id="dump-title"></h3><pre id="dump" hidden></pre>`;
  const refresh = async () => {
    try {
      const [rows, config] = await Promise.all([get("/debug/syncz"), get("/debug/configz")]);
      rows.sort((a, b) => a.proxy.localeCompare(b.proxy));
      const types = ["cds", "lds", "eds", "rds", "sds"];
      let html = `<tr><th>proxy</th>${types.map((t) => `<th>${t.toUpperCase()}</th>`).join("")}<th>version</th><th>NACK error</th><th></th></tr>`;
      for (const r of rows) {
        const nacks = types.filter((t) => syncState(r.types[t]) === "NACKED").map((t) => {
          const err = r.types[t].nack_error;
          const who = blamed(err, config);
          return `<div class="err">${t.toUpperCase()}: ${esc(err)}</div>` + (who.length ? `<div>blamed: ${who.map(esc).join(", ")}</div>` : "");
        }).join("");
        html += `<tr data-proxy="${esc(r.proxy)}"><td>${esc(r.proxy)}</td>` +
          types.map((t) => { const s = syncState(r.types[t]); return `<td class="${s}">${s}</td>`; }).join("") +
          `<td>${esc(r.world_version)}</td><td>${nacks}</td><td><a href="#" class="dump">config dump</a></td></tr>`;
      }
      $("#proxies").innerHTML = html;
      $("#proxies").querySelectorAll("a.dump").forEach((a) => a.onclick = async (ev) => {
        ev.preventDefault();
        const id = a.closest("tr").dataset.proxy;
        $("#dump-title").textContent = "config dump: " + id;
        const d = await get("/debug/config_dump?proxyID=" + encodeURIComponent(id));
        $("#dump").hidden = false;
        $("#dump").textContent = JSON.stringify(d, null, 2);
      });
      status(`${rows.length} proxies`);
      document.body.dataset.loaded = "proxies";
    } catch (e) { status(e.message, true); }
  };
  every(5000, refresh);
}

// ---------------------------------------------------------------------------- config

// Which connected proxies an object reaches: policies with a selector reach the proxies of
// their namespace (all, in the root namespace) whose labels match; the rest reach all.
function reaches(o, proxies) {
  const sel = o.spec && o.spec.selector && o.spec.selector.matchLabels ||
    o.spec && o.spec.workloadSelector && o.spec.workloadSelector.labels;
  const scoped = ["AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication", "Sidecar"].includes(o.kind);
  return proxies.filter((p) => {
    if (!scoped) return true;
    if (o.namespace !== "istio-system" && p.proxy.namespace !== o.namespace) return false;
    if (!sel) return true;
    return Object.entries(sel).every(([k, v]) => (p.proxy.labels || {})[k] === v);
  });
}

async function configPage() {
  $("#main").innerHTML = `<h3>Errors</h3><table id="errors"></table><h3>Objects</h3><table id="objects"></table>`;
  const refresh = async () => {
    try {
      const [c, reg, ads] = await Promise.all([get("/debug/configz"), get("/debug/registryz"), get("/debug/adsz")]);
      const hosts = new Set(reg.map((s) => s.hostname));
      const bad = new Set(c.errors.map((e) => e.object));
      $("#errors").innerHTML = c.errors.length
        ? `<tr><th>file</th><th>object</th><th>field</th><th>reason</th></tr>` + c.errors.map((e) =>
          `<tr class="error-row"><td>${esc(e.file)}</td><td>${esc(e.object)}</td><td><code>${esc(e.field)}</code></td><td class="err">${esc(e.reason)}</td></tr>`).join("")
        : `<tr><td class="accepted">no errors</td></tr>`;
      const proxies = ads.clients || [];
      let html = `<tr><th>object</th><th>file</th><th>status</th><th>reaches</th></tr>`;
      for (const o of c.objects) {
        const id = `${o.kind} ${o.namespace}/${o.name}`;
        let st = bad.has(id) ? "rejected" : "accepted";
        let why = bad.has(id) ? " (the last accepted version is served)" : "";
        const host = o.spec && (o.spec.host || (o.spec.hosts || [])[0]);
        if (st === "accepted" && o.kind === "DestinationRule" && host && ![...hosts].some((h) => h === host || h.startsWith(host + "."))) { st = "unused"; why = " (no service has this host)"; }
        const r = reaches(o, proxies);
        if (st === "accepted" && ["AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication", "Sidecar"].includes(o.kind) && !r.length) { st = "unused"; why = " (selects no connected proxy)"; }
        html += `<tr><td>${esc(id)}</td><td>${esc(o.file)}</td><td class="${st}">${st}${esc(why)}</td>` +
          `<td>${r.length} ${r.length ? `<span class="muted">${r.slice(0, 5).map((p) => esc(p.proxy.id.split("~")[2] || p.proxy.id)).join(", ")}${r.length > 5 ? ", …" : ""}</span>` : ""}</td></tr>`;
      }
      $("#objects").innerHTML = html;
      status(`${c.objects.length} objects, ${c.errors.length} errors`);
      document.body.dataset.loaded = "config";
    } catch (e) { status(e.message, true); }
  };
  every(5000, refresh);
}

// ---------------------------------------------------------------------------- routing

function route() {
  const page = (location.hash.replace("#/", "") || "graph").split("?")[0];
  for (const p of ["graph", "proxies", "config"]) $("#nav-" + p).className = p === page ? "on" : "";
  delete document.body.dataset.loaded;
  ({ graph: graphPage, proxies: proxiesPage, config: configPage }[page] || graphPage)();
}
window.addEventListener("hashchange", route);
route();
