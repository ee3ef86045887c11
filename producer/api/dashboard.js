// Fusebox ops dashboard: live over Server-Sent Events (read with fetch so the key goes in a header).
"use strict";
const $ = (s) => document.querySelector(s);
const state = { providers: [], transitions: [], series: {}, key: null };

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function headers() { return { Authorization: "Bearer " + state.key }; }
function pct(x) { return x == null ? "–" : (100 * x).toFixed(1) + "%"; }
function num(x, d = 0) { return x == null ? "–" : Number(x).toFixed(d); }
function ago(t) {
  if (!t) return "";
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 60 ? `${s.toFixed(0)}s ago` : s < 3600 ? `${(s / 60).toFixed(0)}m ago` : `${(s / 3600).toFixed(1)}h ago`;
}

function spark(points, key, color) {
  const vals = points.map((p) => p[key]);
  const nums = vals.filter((v) => v != null);
  if (!nums.length) return `<svg viewBox="0 0 100 30"><text x="0" y="20" fill="#8b95a3" font-size="9">no data</text></svg>`;
  const max = Math.max(...nums, key === "error_rate" ? 0.05 : 1);
  const step = 100 / Math.max(1, vals.length - 1);
  const pts = vals.map((v, i) => `${(i * step).toFixed(1)},${(28 - 26 * ((v ?? 0) / max)).toFixed(1)}`).join(" ");
  return `<svg viewBox="0 0 100 30" preserveAspectRatio="none"><polyline fill="none" stroke="${color}" stroke-width="1.5" points="${pts}"/></svg>`;
}

function scopeCard(p, s) {
  const series = state.series[p.name] || [];
  const last = series.length ? series[series.length - 1] : {};
  const limit = s.effective_limit || s.max_concurrency;
  const unlimited = s.max_concurrency >= 1000000;
  const width = unlimited ? 0 : Math.min(100, (100 * s.in_flight) / s.max_concurrency);
  const limPos = unlimited ? 0 : Math.min(100, (100 * limit) / s.max_concurrency);
  const trans = state.transitions.filter((t) => t.scope === s.scope).slice(-3).reverse();
  const nextChange = s.next_change_at ? ` · may change in ${Math.max(0, s.next_change_at - s.now).toFixed(0)}s` : "";
  const rate = (used, cap) => (cap ? `${num(used)} / ${cap}` : "–");
  return `
  <div class="card state-${esc(s.state)}" data-scope="${esc(s.scope)}">
    <div class="row"><div><span class="name">${esc(s.scope)}</span> <span class="type">${esc(p.type)}</span></div>
      <span class="badge b-${esc(s.state)}" data-role="state">${esc(s.state.replace("_", " "))}</span></div>
    <div class="muted" style="font-size:12px">in flight ${s.in_flight} / ${unlimited ? "∞" : s.max_concurrency}
      ${!unlimited && limit !== s.max_concurrency ? ` · adaptive limit ${limit}` : ""}${nextChange}</div>
    <div class="bar"><div style="width:${width}%"></div>${limPos && limPos < 100 ? `<span class="lim" style="left:${limPos}%"></span>` : ""}</div>
    <div class="kv">
      <div><span>failure rate</span><b>${pct(s.failure_rate)}</b></div>
      <div><span>window calls</span><b>${s.calls}</b></div>
      <div><span>EMA latency</span><b>${s.latency_ms == null ? "–" : num(s.latency_ms) + " ms"}</b></div>
      <div><span>rpm used</span><b>${rate(s.rpm_used, s.rpm)}</b></div>
      <div><span>tpm used</span><b>${rate(s.tpm_used, s.tpm)}</b></div>
      <div><span>p50 / p95</span><b>${num(last.p50_ms)} / ${num(last.p95_ms)} ms</b></div>
    </div>
    <div class="spark">
      <figure>${spark(series, "error_rate", "#ef4e4e")}<figcaption>error rate, 30 min</figcaption></figure>
      <figure>${spark(series, "p50_ms", "#4c9aff")}<figcaption>p50 latency</figcaption></figure>
      <figure>${spark(series, "p95_ms", "#f0b429")}<figcaption>p95 latency</figcaption></figure>
    </div>
    <ul class="trans">${trans.map((t) => `<li>${esc(ago(t.at))}: ${esc(t.from)} → <b>${esc(t.to)}</b> (${esc(t.reason)}${t.actor ? " by " + esc(t.actor) : ""})</li>`).join("") || '<li>no transitions yet</li>'}</ul>
    <div class="actions">
      <button class="danger" data-act="open" data-scope="${esc(s.scope)}">Force open</button>
      <button data-act="close" data-scope="${esc(s.scope)}">Force closed</button>
      <button data-act="reset" data-scope="${esc(s.scope)}">Reset</button>
    </div>
  </div>`;
}

function renderProviders() {
  const cards = [];
  let open = 0;
  for (const p of state.providers) for (const s of p.scopes) {
    cards.push(scopeCard(p, s));
    if (s.state === "open" || s.state === "forced_open") open++;
  }
  $("#providers").innerHTML = cards.join("") || '<p class="muted">no providers configured</p>';
  $("#summary").textContent = `${cards.length} scopes · ${open} open`;
}

function renderBatches(rows) {
  $("#batches").innerHTML = rows.length ? rows.map((b) => `<tr>
    <td><code>${esc(b.id)}</code></td><td>${esc(b.status)}</td>
    <td><div class="pbar"><div style="width:${(100 * b.progress).toFixed(1)}%"></div></div></td>
    <td>${b.completed + b.failed} / ${b.total}</td><td>${b.failed}</td>
    <td>${b.eta_seconds == null ? "–" : b.eta_seconds.toFixed(0) + " s"}</td></tr>`).join("")
    : '<tr><td colspan="6" class="muted">none</td></tr>';
}

async function act(scope, action) {
  const reason = action === "reset" ? "" : (prompt(`Why force ${scope} ${action}? (audited)`) ?? null);
  if (reason === null) return;
  const r = await fetch(`/v1/providers/${encodeURIComponent(scope)}/breaker`, {
    method: "POST", headers: { ...headers(), "Content-Type": "application/json" },
    body: JSON.stringify({ action, reason }),
  });
  if (!r.ok) alert(`failed: ${r.status} ${await r.text()}`);
}

async function loadSeries() {
  try {
    const r = await fetch("/v1/fusebox/ops/series?minutes=30", { headers: headers() });
    if (r.ok) { state.series = await r.json(); renderProviders(); }
  } catch (e) { /* the event stream shows the connection state */ }
}

function onEvent(type, data) {
  if (type === "providers") { state.providers = data; renderProviders(); }
  else if (type === "batches") renderBatches(data);
  else if (type === "transitions") { state.transitions = data; renderProviders(); }
  else if (type === "transition") { state.transitions.push(data); state.transitions = state.transitions.slice(-200); }
}

async function stream() {
  const conn = $("#conn");
  let lastId = "";
  for (;;) {
    try {
      const r = await fetch("/v1/events", { headers: { ...headers(), ...(lastId ? { "Last-Event-ID": lastId } : {}) } });
      if (r.status === 401 || r.status === 403) { sessionStorage.removeItem("fusebox-key"); return showLogin(); }
      if (!r.ok) throw new Error(String(r.status));
      conn.textContent = "live"; conn.className = "live";
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i); buf = buf.slice(i + 2);
          let ev = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) ev = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
            else if (line.startsWith("id: ")) lastId = line.slice(4);
          }
          if (data) onEvent(ev, JSON.parse(data));
        }
      }
    } catch (e) { /* reconnect below */ }
    conn.textContent = "reconnecting…"; conn.className = "down";
    await new Promise((res) => setTimeout(res, 2000));
  }
}

function showLogin() {
  $("#app").hidden = true; $("#login").hidden = false; $("#conn").textContent = "signed out";
}

function start(key) {
  state.key = key; sessionStorage.setItem("fusebox-key", key);
  $("#login").hidden = true; $("#app").hidden = false;
  loadSeries(); setInterval(loadSeries, 15000);
  stream();
}

document.addEventListener("click", (e) => {
  const b = e.target.closest("button[data-act]");
  if (b) act(b.dataset.scope, b.dataset.act);
});
$("#login-form").addEventListener("submit", (e) => { e.preventDefault(); start($("#key").value.trim()); });

// A key in the fragment (#key=...) is never sent to the server; take it and clear it from the bar.
const frag = new URLSearchParams(location.hash.slice(1)).get("key");
if (frag) history.replaceState(null, "", location.pathname);
const saved = frag || sessionStorage.getItem("fusebox-key");
if (saved) start(saved); else showLogin();
