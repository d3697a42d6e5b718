// rigd live view: receives server-sent events from /events (at most 10 per second, see
// rig/live_view.py) and draws the raster, CD projections, epochs, light lanes and the latency
// histogram on canvases. Hand-written, no dependencies, no build step.
//
// Every panel keeps its data inside a plot rectangle and its axes (ticks, tick labels, titles,
// legend) in the margins around it. What was drawn where is kept in window.rigdLayout (plot
// rectangles, every text's bounding box) beside window.rigdPalette, so that tests check
// legibility from the page's own state (docs/live-view.md).
"use strict";

const S = {
  raster: [],      // {t, col} raster columns (t: column end, seconds on the rig clock)
  dec: [],         // {t, left, right}
  rowsLeft: 0, rowsRight: 0, columnS: 0.02,
  tNow: 0, windowS: 10, epochs: [], light: [], updates: 0, last: null, ended: false,
};

// Epoch shading is translucent over white; light is never a translucent fill over it (a blend with
// the delay's amber read as the response's green): it is an opaque bar in its own lane above each
// hemisphere plus its onset/offset edges, in a colour far from every epoch's.
const PALETTE = {
  sample: [66, 133, 244, 0.16], delay: [251, 188, 5, 0.22], response: [52, 168, 83, 0.16],
  light: [142, 36, 170, 1], lightNotApplied: [150, 150, 150, 1],
};
const rgba = (c) => `rgba(${c[0]},${c[1]},${c[2]},${c[3]})`;
const INK = "#1d2329", AXIS = "#4a5560", GRID = "#d6dbe0";
const FONT = "11px system-ui, sans-serif", BOLD = "600 11px system-ui, sans-serif";
const LAYOUT = {};
window.rigdPalette = PALETTE;
window.rigdLayout = LAYOUT;

const $ = (id) => document.getElementById(id);
const fmtUs = (x) => (x === null || x === undefined) ? "–"
  : (x >= 1000 ? (x / 1000).toFixed(x >= 10000 ? 0 : 2) + " ms" : x.toFixed(0) + " µs");
const fmtCount = (n) => n >= 1e6 ? (n / 1e6).toFixed(n >= 1e7 ? 0 : 1) + "M"
  : n >= 1e3 ? (n / 1e3).toFixed(n >= 1e4 ? 0 : 1) + "k" : String(Math.round(n));
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
const plural = (n, noun) => `${n} ${noun}${n === 1 ? "" : "s"}`;

function niceCeil(x) {
  if (!(x > 0)) return 1;
  const e = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 5, 10]) if (m * e >= x) return m * e;
  return 10 * e;
}

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

// -- layout bookkeeping --------------------------------------------------------------------
function begin(id) {
  const c = $(id), ctx = c.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, c.width, c.height);
  const rec = { canvas: id, width: c.width, height: c.height, plots: [], labels: [], clipped: 0 };
  LAYOUT[id] = rec;
  return [c, ctx, rec];
}

function plot(rec, name, x, y, w, h) {
  const p = { name, x, y, w, h };
  rec.plots.push(p);
  return p;
}

// Draw a text and keep its bounding box (role: "xtick", "ytick", "title", "legend", "note").
function label(ctx, rec, s, x, y, role, { align = "left", base = "alphabetic", font = FONT, color = AXIS } = {}) {
  ctx.font = font; ctx.fillStyle = color; ctx.textAlign = align; ctx.textBaseline = base;
  ctx.fillText(s, x, y);
  const m = ctx.measureText(s);
  const x0 = x - m.actualBoundingBoxLeft, x1 = x + m.actualBoundingBoxRight;
  const y0 = y - m.actualBoundingBoxAscent, y1 = y + m.actualBoundingBoxDescent;
  rec.labels.push({ text: s, role, x: x0, y: y0, w: x1 - x0, h: y1 - y0 });
  ctx.textAlign = "left"; ctx.textBaseline = "alphabetic";
}

// -- time-axis panels ----------------------------------------------------------------------
const MARGIN_L = 112, MARGIN_R = 10, LANE = 8;

function xOf(t, P) { return P.x + (t - (S.tNow - S.windowS)) / S.windowS * P.w; }

function shadeEpochs(ctx, P) {
  for (const e of S.epochs) {
    const a = Math.max(P.x, xOf(e.t0, P)), b = Math.min(P.x + P.w, xOf(e.t1, P));
    if (b <= a || !PALETTE[e.epoch]) continue;
    ctx.fillStyle = rgba(PALETTE[e.epoch]);
    ctx.fillRect(a, P.y, b - a, P.h);
  }
}

// The light lane above a hemisphere's plot: an opaque bar while its light was on, and thin edges
// at onset and offset through the plot.
function lightLane(ctx, rec, P, hemi) {
  const y = P.y - LANE - 1;
  ctx.fillStyle = "#f0f1f3"; ctx.fillRect(P.x, y, P.w, LANE);
  for (const l of S.light) {
    if (!(hemi === "left" ? l.left : l.right)) continue;
    const a = Math.max(P.x, xOf(l.t0, P)), b = Math.min(P.x + P.w, xOf(l.t1, P));
    if (b <= a) continue;
    const ok = l.status === "applied" || l.status === "sent" || l.status === "stopped";
    const col = rgba(ok ? PALETTE.light : PALETTE.lightNotApplied);
    ctx.fillStyle = col; ctx.fillRect(a, y, b - a, LANE);
    rec.light_bars = (rec.light_bars || 0) + 1;
    ctx.fillRect(a, P.y, 1.5, P.h); ctx.fillRect(b - 1.5, P.y, 1.5, P.h);
  }
  label(ctx, rec, "light", 4, y + LANE - 1, "title", { font: "10px system-ui, sans-serif" });
}

function frame(ctx, P) {
  ctx.strokeStyle = GRID; ctx.lineWidth = 1;
  ctx.strokeRect(P.x - 0.5, P.y - 0.5, P.w + 1, P.h + 1);
}

// Ticks under the lowest plot at whole seconds of the rig clock, spaced so labels never touch.
function timeAxis(ctx, rec, P, top) {
  ctx.font = FONT;
  const widest = ctx.measureText(Math.round(S.tNow).toFixed(0)).width + 14;
  let step = 1;
  for (const s of [1, 2, 5, 10, 20, 30, 60, 120, 300]) { step = s; if (s * P.w / S.windowS >= widest) break; }
  const y = P.y + P.h;
  ctx.fillStyle = AXIS;
  for (let s = Math.ceil((S.tNow - S.windowS) / step) * step; s <= S.tNow + 1e-9; s += step) {
    const x = xOf(s, P);
    if (x < P.x || x > P.x + P.w) continue;
    ctx.fillStyle = GRID; ctx.fillRect(x, top, 1, y - top);
    ctx.fillStyle = AXIS; ctx.fillRect(x, y + 1, 1, 5);
    label(ctx, rec, s.toFixed(0), x, y + 18, "xtick", { align: "center" });
  }
  label(ctx, rec, "time on the rig clock (s since the first frame)", P.x + P.w / 2, y + 36, "title",
    { align: "center" });
}

const off = document.createElement("canvas");

function drawRaster() {
  const [c, ctx, rec] = begin("raster");
  const W = c.width, H = c.height;
  const gap = 10, bottom = 44, ph = (H - 4 - 2 * (LANE + 1) - gap - bottom) / 2;
  const PL = plot(rec, "left", MARGIN_L, 4 + LANE + 1, W - MARGIN_L - MARGIN_R, ph);
  const PR = plot(rec, "right", MARGIN_L, PL.y + ph + gap + LANE + 1, PL.w, ph);
  const rows = S.rowsLeft + S.rowsRight;
  for (const P of [PL, PR]) shadeEpochs(ctx, P);
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
    if (S.rowsLeft) ctx.drawImage(off, 0, 0, nCols, S.rowsLeft, PL.x, PL.y, PL.w, PL.h);
    if (S.rowsRight) ctx.drawImage(off, 0, S.rowsLeft, nCols, S.rowsRight, PR.x, PR.y, PR.w, PR.h);
  }
  const rig = (S.last && S.last.rig) || {};
  for (const [P, hemi, units] of [[PL, "left", rig.units_left], [PR, "right", rig.units_right]]) {
    frame(ctx, P);
    lightLane(ctx, rec, P, hemi);
    label(ctx, rec, `${hemi} ALM`, 4, P.y + P.h / 2 - 2, "title", { font: BOLD, color: INK });
    if (units !== undefined && units !== null) label(ctx, rec, `${units} units`, 4, P.y + P.h / 2 + 13, "title");
  }
  timeAxis(ctx, rec, PR, PL.y);
  $("raster-info").textContent = rig.n_units ? `(${rig.units_left ?? "?"} + ${rig.units_right ?? "?"} units in ` +
    `${S.rowsLeft} + ${S.rowsRight} rows, ${(S.columnS * 1000).toFixed(0)} ms columns; grey level: spikes ` +
    "per column up to the window's 98th percentile)" : "";
}

function decoderText(dec) {
  if (!dec || (dec.ready === undefined && dec.state === undefined)) return "–";
  if (dec.ready) return dec.state ?? "ready";
  const k = dec.pool_trials, n = dec.n_fit_trials;
  if (k !== undefined && k !== null && n) return `calibrating ${Math.min(k, n)}/${n} trials`;
  return dec.state ?? "calibrating";
}

function drawCd() {
  const [c, ctx, rec] = begin("cd");
  const W = c.width, H = c.height;
  const gap = 12, bottom = 44, ph = (H - 4 - 2 * (LANE + 1) - gap - bottom) / 2;
  const P1 = plot(rec, "left", MARGIN_L, 4 + LANE + 1, W - MARGIN_L - MARGIN_R, ph);
  const P2 = plot(rec, "right", MARGIN_L, P1.y + ph + gap + LANE + 1, P1.w, ph);
  // one symmetric scale for both hemispheres: the 98th percentile of |value| in view, rounded up
  const t0 = S.tNow - S.windowS, mags = [];
  for (const d of S.dec) if (d.t >= t0) for (const v of [d.left, d.right]) if (v !== null) mags.push(Math.abs(v));
  mags.sort((a, b) => a - b);
  const m = niceCeil(mags.length ? mags[Math.floor(0.98 * (mags.length - 1))] : 1);
  rec.scale = m;
  for (const [P, hemi, colour] of [[P1, "left", "#1a73e8"], [P2, "right", "#d93025"]]) {
    shadeEpochs(ctx, P);
    const yOf = (v) => P.y + P.h / 2 - (v / m) * (P.h / 2 - 2);
    ctx.save();
    ctx.beginPath(); ctx.rect(P.x, P.y, P.w, P.h); ctx.clip();  // the trace never leaves its panel
    ctx.strokeStyle = "#555"; ctx.setLineDash([4, 3]); ctx.beginPath();
    ctx.moveTo(P.x, yOf(0)); ctx.lineTo(P.x + P.w, yOf(0)); ctx.stroke(); ctx.setLineDash([]);
    ctx.strokeStyle = colour; ctx.lineWidth = 1.5; ctx.beginPath();
    let pen = false;
    for (const d of S.dec) {
      const v = d[hemi];
      if (v === null) { pen = false; continue; }
      if (Math.abs(v) > m && d.t >= t0) rec.clipped += 1;
      const x = xOf(d.t, P), y = yOf(v);
      if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      pen = true;
    }
    ctx.stroke(); ctx.lineWidth = 1;
    ctx.restore();
    frame(ctx, P);
    lightLane(ctx, rec, P, hemi);
    for (const v of [m, 0, -m]) {
      const y = yOf(v);
      ctx.fillStyle = AXIS; ctx.fillRect(P.x - 5, y, 5, 1);
      label(ctx, rec, v === 0 ? "0" : (v > 0 ? "+" : "−") + String(Math.abs(v)), P.x - 8, y, "ytick",
        { align: "right", base: "middle" });
    }
    label(ctx, rec, `${hemi} ALM`, 4, P.y + P.h / 2 - 8, "title", { font: BOLD, color: INK });
    label(ctx, rec, "spikes/s", 4, P.y + P.h / 2 + 8, "title");
    if (!S.dec.length) {
      const dec = S.last ? decoderText(S.last.decoder_status) : "–";
      label(ctx, rec, dec.startsWith("calibrating") ? `decoder ${dec}: no CD yet` : "no decoder output yet",
        P.x + P.w / 2, P.y + P.h / 2 - 6, "note", { align: "center", color: "#6b7682" });
    }
  }
  timeAxis(ctx, rec, P2, P1.y);
}

// -- side panels ---------------------------------------------------------------------------
const LAT_SERIES = [["internal", "internal (frame in → decision)", [26, 115, 232]],
  ["e2e", "end to end (frame sent → light acknowledged)", [217, 48, 37]]];

function drawLatency(lat) {
  const [c, ctx, rec] = begin("latency");
  const W = c.width, H = c.height;
  const P = plot(rec, "histogram", 50, 62, W - 50 - 12, H - 62 - 44);
  if (!lat) return;
  const edges = lat.edges_us, n = edges.length - 1, lo = Math.log10(edges[0]), hi = Math.log10(edges[n]);
  const xOfUs = (us) => P.x + (Math.log10(Math.max(us, edges[0])) - lo) / (hi - lo) * P.w;
  let max = 1;
  for (const [k] of LAT_SERIES) for (const v of (lat[k].counts || [])) max = Math.max(max, v);
  const top = niceCeil(max);
  const yOf = (v) => P.y + P.h - (v / top) * P.h;
  // legend (above the plot): series, percentile line styles, the deadline
  let x = P.x - 46;
  for (const [k, name, col] of LAT_SERIES) {
    ctx.fillStyle = rgba([...col, 0.6]); ctx.fillRect(x, 4, 12, 9);
    label(ctx, rec, k === "e2e" ? "end to end" : "internal", x + 16, 13, "legend", { color: INK });
    x += 16 + ctx.measureText(k === "e2e" ? "end to end" : "internal").width + 14;
  }
  x = P.x - 46;
  for (const [name, dash] of [["p50", []], ["p99", [3, 2]]]) {
    ctx.strokeStyle = INK; ctx.setLineDash(dash); ctx.beginPath();
    ctx.moveTo(x, 24); ctx.lineTo(x + 16, 24); ctx.stroke(); ctx.setLineDash([]);
    label(ctx, rec, name, x + 20, 28, "legend", { color: INK });
    x += 20 + ctx.measureText(name).width + 14;
  }
  ctx.fillStyle = "#b3261e"; ctx.fillRect(x, 18, 3, 12);
  label(ctx, rec, `deadline ${fmtUs(lat.deadline_us)}`, x + 8, 28, "legend", { color: "#b3261e", font: BOLD });
  // bars, percentiles, deadline (inside the plot)
  for (const [k, , col] of LAT_SERIES) {
    ctx.fillStyle = rgba([...col, 0.55]);
    (lat[k].counts || []).forEach((v, i) => {
      if (!v) return;
      const x0 = xOfUs(edges[i]), x1 = xOfUs(edges[i + 1]), y = yOf(v);
      ctx.fillRect(x0, Math.min(y, P.y + P.h - 1), Math.max(1, x1 - x0 - 1), Math.max(1, P.y + P.h - y));
    });
    for (const [p, dash] of [["p50", []], ["p99", [3, 2]]]) {
      const v = lat[k][p];
      if (v === null || v === undefined) continue;
      ctx.strokeStyle = rgba(col); ctx.setLineDash(dash); ctx.beginPath();
      ctx.moveTo(xOfUs(v), P.y); ctx.lineTo(xOfUs(v), P.y + P.h); ctx.stroke(); ctx.setLineDash([]);
    }
  }
  const xd = xOfUs(lat.deadline_us);
  ctx.fillStyle = "#b3261e"; ctx.fillRect(xd - 1, P.y, 3, P.h);
  rec.deadline_x = xd;
  frame(ctx, P);
  // axes
  for (const v of [0, top / 2, top]) {
    ctx.fillStyle = AXIS; ctx.fillRect(P.x - 5, yOf(v), 5, 1);
    label(ctx, rec, fmtCount(v), P.x - 8, yOf(v), "ytick", { align: "right", base: "middle" });
  }
  label(ctx, rec, "loops", 4, P.y - 8, "title");
  for (let e = Math.ceil(lo); e <= hi; e++) {
    const xt = xOfUs(10 ** e);
    ctx.fillStyle = AXIS; ctx.fillRect(xt, P.y + P.h + 1, 1, 5);
    label(ctx, rec, e < 3 ? `${10 ** e} µs` : e < 6 ? `${10 ** (e - 3)} ms` : `${10 ** (e - 6)} s`, xt, P.y + P.h + 18,
      "xtick", { align: e === Math.ceil(lo) ? "left" : e === Math.floor(hi) ? "right" : "center" });
  }
  label(ctx, rec, "latency per loop (log scale)", P.x + P.w / 2, P.y + P.h + 36, "title", { align: "center" });
  const i = lat.internal, e2 = lat.e2e, dl = fmtUs(lat.deadline_us);
  $("latency-text").innerHTML =
    `<span style="color:#1a73e8">internal</span> p50 ${fmtUs(i.p50)} · p99 ${fmtUs(i.p99)} · n ${i.n ?? 0} · ` +
    `over the ${dl} deadline <b id="internal-misses">${i.deadline_misses ?? 0}</b><br>` +
    `<span style="color:#d93025">end to end</span> p50 ${fmtUs(e2.p50)} · p99 ${fmtUs(e2.p99)} · n ${e2.n ?? 0} · ` +
    `over the ${dl} deadline <b id="deadline-misses">${e2.deadline_misses ?? 0}</b>`;
}

function renderTables(u) {
  const st = u.status || {};
  const state = st.state || "no service";
  const finished = state === "stopped";
  $("state").textContent = finished ? "session finished" : state;
  $("state").className = "pill " + state;
  if (finished) S.ended = true;
  $("trials-done").textContent = Math.max(st.trials_done ?? 0, u.trials_done ?? 0);
  $("trials-target").textContent = st.trials_target ? ` / ${st.trials_target}` : "";
  $("frames").textContent = Math.max(st.frames ?? 0, u.frames ?? 0);
  $("uptime").textContent = st.uptime_s !== undefined && st.uptime_s !== null ? `${st.uptime_s.toFixed(0)} s` : "–";
  $("protocol").textContent = (u.protocol && u.protocol.name) || "–";
  $("protocol-sha").textContent = (u.protocol && u.protocol.sha256) ? u.protocol.sha256.slice(0, 12) : "";
  $("decoder").textContent = decoderText(u.decoder_status);
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
  // the server's last word when the live view stops: the final state; nothing to reconnect to
  es.addEventListener("end", (ev) => {
    es.close();
    ingest(JSON.parse(ev.data));
    render();
    $("conn").textContent = S.ended ? "session finished · live view closed" : "live view closed";
    if (!S.ended) { $("state").textContent = "live view closed"; $("state").className = "pill offline"; }
  });
  es.onerror = () => {
    if (S.ended) { es.close(); $("conn").textContent = "session finished · live view closed"; return; }
    $("conn").textContent = "disconnected (retrying)";
    $("state").className = "pill offline";
  };
}

connect();
