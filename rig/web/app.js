// rigd live view: receives server-sent events from /events (at most 10 per second, see
// rig/live_view.py) and draws the raster, CD projections, epochs, light bars and the latency
// histogram on canvases. Hand-written, no dependencies, no build step.
"use strict";

const S = {
  raster: [],      // {t, col} raster columns (t: column end, seconds on the rig clock)
  dec: [],         // {t, left, right}
  rowsLeft: 0, rowsRight: 0, columnS: 0.02,
  tNow: 0, windowS: 10, epochs: [], light: [], updates: 0, last: null,
};

const $ = (id) => document.getElementById(id);
const fmtUs = (x) => (x === null || x === undefined) ? "–"
  : (x >= 1000 ? (x / 1000).toFixed(2) + " ms" : x.toFixed(0) + " µs");
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));

function ingest(u) {
  S.updates += 1;
  S.last = u;
  S.tNow = u.t_now; S.windowS = u.window_s;
  const r = u.raster;
  if (r.reset) S.raster = [];
  S.rowsLeft = r.rows_left; S.rowsRight = r.rows_right; S.columnS = r.column_s;
  for (let i = 0; i < r.t.length; i++) S.raster.push({ t: r.t[i], col: r.cols[i] });
  const d = u.decoder;
  if (d.reset) S.dec = [];
  for (let i = 0; i < d.t.length; i++) S.dec.push({ t: d.t[i], left: d.left[i], right: d.right[i] });
  const lo = S.tNow - S.windowS - 1;
  while (S.raster.length && S.raster[0].t < lo) S.raster.shift();
  while (S.dec.length && S.dec[0].t < lo) S.dec.shift();
  S.epochs = u.epochs; S.light = u.light;
}

// -- time-axis panels ----------------------------------------------------------------------
const EPOCH_FILL = { sample: "rgba(66,133,244,0.13)", delay: "rgba(251,188,5,0.20)", response: "rgba(52,168,83,0.13)" };

function xOf(t, W) { return (t - (S.tNow - S.windowS)) / S.windowS * W; }

function shade(ctx, W, y0, h, hemi) {
  for (const e of S.epochs) {
    const a = Math.max(0, xOf(e.t0, W)), b = Math.min(W, xOf(e.t1, W));
    if (b <= a) continue;
    ctx.fillStyle = EPOCH_FILL[e.epoch] || "rgba(0,0,0,0.05)";
    ctx.fillRect(a, y0, b - a, h);
  }
  for (const l of S.light) {
    if (!(hemi === "left" ? l.left : l.right)) continue;
    const a = Math.max(0, xOf(l.t0, W)), b = Math.min(W, xOf(l.t1, W));
    if (b <= a) continue;
    const ok = l.status === "applied" || l.status === "sent" || l.status === "stopped";
    ctx.fillStyle = ok ? "rgba(0,170,255,0.16)" : "rgba(120,120,120,0.18)";
    ctx.fillRect(a, y0, b - a, h);
    ctx.fillStyle = ok ? "rgba(0,170,255,0.85)" : "#999";
    ctx.fillRect(a, y0, b - a, 5);  // the light-on bar
  }
}

function timeTicks(ctx, W, y) {
  ctx.fillStyle = "#6b7682"; ctx.font = "10px system-ui";
  for (let s = Math.ceil(S.tNow - S.windowS); s <= S.tNow; s++) {
    const x = xOf(s, W);
    ctx.fillRect(x, y - 4, 1, 4);
    ctx.fillText(s.toFixed(0) + " s", x + 2, y - 1);
  }
}

const off = document.createElement("canvas");

function drawRaster() {
  const c = $("raster"), ctx = c.getContext("2d"), W = c.width, H = c.height;
  ctx.clearRect(0, 0, W, H);
  const rows = S.rowsLeft + S.rowsRight;
  const half = H / 2 - 6;
  shade(ctx, W, 0, half, "left");
  shade(ctx, W, half + 12, half, "right");
  if (rows > 0 && S.raster.length) {
    const nCols = Math.max(1, Math.round(S.windowS / S.columnS));
    off.width = nCols; off.height = rows;
    const octx = off.getContext("2d");
    const img = octx.createImageData(nCols, rows);
    // colour scale: 98th percentile of the window, per hemisphere
    const scale = [0, 0].map((_, h) => {
      const vals = [];
      for (const col of S.raster) for (let r = h ? S.rowsLeft : 0; r < (h ? rows : S.rowsLeft); r += 1) vals.push(col.col[r]);
      vals.sort((a, b) => a - b);
      return Math.max(1, vals[Math.floor(0.98 * (vals.length - 1))] || 1);
    });
    const t0 = S.tNow - S.windowS;
    for (const col of S.raster) {
      const x = Math.round((col.t - t0) / S.columnS) - 1;
      if (x < 0 || x >= nCols) continue;
      for (let r = 0; r < rows; r++) {
        const v = Math.min(1, col.col[r] / scale[r < S.rowsLeft ? 0 : 1]);
        const k = 4 * (r * nCols + x), g = Math.round(255 * (1 - v));
        img.data[k] = g; img.data[k + 1] = g; img.data[k + 2] = g; img.data[k + 3] = v > 0 ? 255 : 0;
      }
    }
    octx.putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    if (S.rowsLeft) ctx.drawImage(off, 0, 0, nCols, S.rowsLeft, 0, 0, W, half);
    if (S.rowsRight) ctx.drawImage(off, 0, S.rowsLeft, nCols, S.rowsRight, 0, half + 12, W, half);
  }
  ctx.fillStyle = "#1d2329"; ctx.font = "11px system-ui";
  ctx.fillText("left ALM", 4, 12); ctx.fillText("right ALM", 4, half + 24);
  ctx.fillStyle = "#d6dbe0"; ctx.fillRect(0, half + 5, W, 2);
  timeTicks(ctx, W, H);
  const rig = (S.last && S.last.rig) || {};
  $("raster-info").textContent = rig.n_units ? `(${rig.units_left ?? "?"} + ${rig.units_right ?? "?"} units in ` +
    `${S.rowsLeft} + ${S.rowsRight} rows, ${(S.columnS * 1000).toFixed(0)} ms columns)` : "";
}

function drawCd() {
  const c = $("cd"), ctx = c.getContext("2d"), W = c.width, H = c.height;
  ctx.clearRect(0, 0, W, H);
  const ph = H / 2 - 8;
  let m = 1;
  for (const d of S.dec) for (const v of [d.left, d.right]) if (v !== null && Math.abs(v) > m) m = Math.abs(v);
  [["left", 0, "#1a73e8"], ["right", ph + 16, "#d93025"]].forEach(([hemi, y0, colour]) => {
    shade(ctx, W, y0, ph, hemi);
    const yOf = (v) => y0 + ph / 2 - (v / m) * (ph / 2 - 4);
    ctx.strokeStyle = "#555"; ctx.setLineDash([4, 3]); ctx.beginPath();
    ctx.moveTo(0, yOf(0)); ctx.lineTo(W, yOf(0)); ctx.stroke(); ctx.setLineDash([]);
    ctx.strokeStyle = colour; ctx.lineWidth = 1.5; ctx.beginPath();
    let pen = false;
    for (const d of S.dec) {
      const v = d[hemi];
      if (v === null) { pen = false; continue; }
      const x = xOf(d.t, W), y = yOf(v);
      if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      pen = true;
    }
    ctx.stroke(); ctx.lineWidth = 1;
    ctx.fillStyle = "#1d2329"; ctx.font = "11px system-ui";
    ctx.fillText(`${hemi} ALM CD (±${m.toFixed(1)})`, 4, y0 + 12);
    ctx.fillText("boundary", W - 52, yOf(0) - 3);
  });
  timeTicks(ctx, W, H);
}

// -- side panels ---------------------------------------------------------------------------
function drawLatency(lat) {
  const c = $("latency"), ctx = c.getContext("2d"), W = c.width, H = c.height;
  ctx.clearRect(0, 0, W, H);
  if (!lat) return;
  const edges = lat.edges_us, n = edges.length - 1, lo = Math.log10(edges[0]), hi = Math.log10(edges[n]);
  const xOfUs = (us) => (Math.log10(Math.max(us, edges[0])) - lo) / (hi - lo) * W;
  const pb = H - 16;
  const series = [["internal", "rgba(26,115,232,0.6)"], ["e2e", "rgba(217,48,37,0.55)"]];
  let max = 1;
  for (const [k] of series) for (const v of (lat[k].counts || [])) max = Math.max(max, v);
  for (const [k, col] of series) {
    ctx.fillStyle = col;
    (lat[k].counts || []).forEach((v, i) => {
      if (!v) return;
      const x0 = xOfUs(edges[i]), x1 = xOfUs(edges[i + 1]), h = Math.max(1, (v / max) * (pb - 14));
      ctx.fillRect(x0, pb - h, Math.max(1, x1 - x0 - 1), h);
    });
    for (const [p, dash] of [["p50", []], ["p99", [3, 2]]]) {
      const v = lat[k][p];
      if (v === null || v === undefined) continue;
      ctx.strokeStyle = col.replace(/0\.\d+\)/, "1)"); ctx.setLineDash(dash); ctx.beginPath();
      ctx.moveTo(xOfUs(v), 10); ctx.lineTo(xOfUs(v), pb); ctx.stroke(); ctx.setLineDash([]);
    }
  }
  ctx.strokeStyle = "#b3261e"; ctx.lineWidth = 2; ctx.beginPath();
  ctx.moveTo(xOfUs(lat.deadline_us), 0); ctx.lineTo(xOfUs(lat.deadline_us), pb); ctx.stroke(); ctx.lineWidth = 1;
  ctx.fillStyle = "#b3261e"; ctx.font = "10px system-ui"; ctx.fillText("deadline", xOfUs(lat.deadline_us) + 3, 10);
  ctx.fillStyle = "#6b7682";
  for (let e = Math.ceil(lo); e <= hi; e++) {
    const x = xOfUs(10 ** e);
    ctx.fillRect(x, pb, 1, 4);
    ctx.fillText(e < 3 ? `${10 ** e} µs` : `${10 ** (e - 3)} ms`, x + 2, H - 3);
  }
  const i = lat.internal, e2 = lat.e2e;
  $("latency-text").innerHTML =
    `<span style="color:#1a73e8">internal</span> p50 ${fmtUs(i.p50)} · p99 ${fmtUs(i.p99)} · n ${i.n ?? 0} · ` +
    `misses <b id="internal-misses">${i.deadline_misses ?? 0}</b><br>` +
    `<span style="color:#d93025">end to end</span> p50 ${fmtUs(e2.p50)} · p99 ${fmtUs(e2.p99)} · n ${e2.n ?? 0} · ` +
    `deadline misses <b id="deadline-misses">${e2.deadline_misses ?? 0}</b> (deadline ${fmtUs(lat.deadline_us)})`;
}

function renderTables(u) {
  const st = u.status || {};
  const state = st.state || "no service";
  $("state").textContent = state; $("state").className = "pill " + state;
  $("trials-done").textContent = Math.max(st.trials_done ?? 0, u.trials_done ?? 0);
  $("trials-target").textContent = st.trials_target ? ` / ${st.trials_target}` : "";
  $("frames").textContent = Math.max(st.frames ?? 0, u.frames ?? 0);
  $("uptime").textContent = st.uptime_s !== undefined && st.uptime_s !== null ? `${st.uptime_s.toFixed(0)} s` : "–";
  $("protocol").textContent = (u.protocol && u.protocol.name) || "–";
  $("protocol-sha").textContent = (u.protocol && u.protocol.sha256) ? u.protocol.sha256.slice(0, 12) : "";
  const dec = u.decoder_status || {};
  $("decoder").textContent = dec.state ?? (dec.ready === undefined ? "–" : (dec.ready ? "ready" : "calibrating"));
  $("updates").textContent = S.updates;
  $("window").textContent = S.windowS;

  const ob = $("outcomes").tBodies[0];
  ob.innerHTML = Object.entries(u.outcomes || {}).map(([cond, r]) =>
    `<tr><td>${esc(cond)}</td><td>${r.n}</td><td class="hit">${r.hit}</td><td class="error">${r.error}</td>` +
    `<td>${r.ignore}</td><td>${r.early_lick}</td><td>${r.correct === null ? "–" : (100 * r.correct).toFixed(0) + " %"}</td></tr>`).join("");

  const rb = $("recent").tBodies[0];
  rb.innerHTML = (u.recent_trials || []).slice().reverse().map((t) =>
    `<tr><td>${t.trial}</td><td>${esc(t.condition)}${t.condition === "not_delivered" ? " (planned " + esc(t.planned) + ")" : ""}</td><td>${esc(t.instructed)}</td><td>${esc(t.choice ?? "–")}</td>` +
    `<td class="${esc(t.outcome)}">${esc(t.outcome)}</td><td>${esc(t.light ?? "–")}</td>` +
    `<td${t.refused.length ? ' class="error"' : ""}>${esc(t.refused.join(", ") || "–")}</td></tr>`).join("");

  const drops = Object.assign({}, u.drops || {});
  drops["light acks late"] = (u.light_acks || {}).late || 0;
  $("drops").tBodies[0].innerHTML = Object.entries(drops).map(([k, v]) =>
    `<tr><td>${esc(k)}</td><td${v ? ' class="bad"' : ""}>${v}</td></tr>`).join("");

  const n = u.n_alarms || 0;
  $("alarm-count").textContent = n; $("alarm-count").className = "count" + (n ? " hot" : "");
  $("refusal-count").textContent = u.n_refusals || 0;
  $("alarms").innerHTML = (u.alarms || []).slice().reverse().map((a) =>
    `<li class="${a.refusal ? "refusal" : a.severity}">${esc(a.kind)}${a.limit ? " [" + esc(a.limit) + "]" : ""}` +
    `${a.trial !== null && a.trial !== undefined ? " trial " + a.trial : ""}: ${esc(a.message)}</li>`).join("");
}

function render() {
  drawRaster(); drawCd(); drawLatency(S.last.latency); renderTables(S.last);
}

function connect() {
  const es = new EventSource("/events");
  es.onopen = () => { $("conn").textContent = "live"; };
  es.onmessage = (ev) => {
    ingest(JSON.parse(ev.data));
    render();  // at most refresh_hz (≤ 10) times a second: the server paces the stream
  };
  es.onerror = () => {
    $("conn").textContent = "disconnected (retrying)";
    $("state").className = "pill offline";
  };
}

connect();
