// netmatrix web page: a live heatmap of the aggregator's matrix.
//
// Polls /api/v1/matrix/compact and /api/v1/findings (no other host, no
// library), draws the directed node-to-node matrix on a <canvas> (only the
// visible cells, so 1,000 nodes stay smooth), and keeps the last HISTORY
// polls of every cell in one Uint8Array ring per network.
//
// Contract for tests and scripts (stable):
//   window.netmatrix.updates                 successful polls so far
//   window.netmatrix.generatedUnixMs         the matrix's generated_unix_ms
//   window.netmatrix.error                   last poll error, or null
//   window.netmatrix.nodes()                 node names, matrix order
//   window.netmatrix.cellStatus(from, to, network = "pod")
//        "ok" | "degraded" | "failed" | "unknown", or null if no such cell;
//        "not-probed" for a node's own cell that nothing probes (a host
//        agent does not ping its own node)
//   window.netmatrix.checkStatus(node, column, network = "pod")   idem
//   window.netmatrix.findings()              [{kind, nodes, summary}, ...]
//   window.netmatrix.history(from, to, network = "pod")   statuses, oldest first
//   window.netmatrix.select(from, to, network = "pod")    opens the details
// DOM: #findings > li[data-kind][data-nodes] (nodes comma-separated);
// body[data-state] is loading | live | error; up to 50 nodes, the visually
// hidden table#cells has td[data-network][data-from][data-to][data-status].
// Every status has a symbol beside its colour (GLYPHS), so the matrix reads
// without colour; the legend in the header and footer says what they mean.
"use strict";
(() => {
  const MATRIX_COMPACT = "/api/v1/matrix/compact";
  const FINDINGS = "/api/v1/findings";
  const CELL = "/api/v1/matrix/cell";
  const FACTS = "/api/v1/facts";
  const HISTORY = 30;
  const TABLE_MAX_NODES = 50;
  const CODE = { o: 0, d: 1, f: 2, u: 3 };
  const NONE = 4; // no such check on this row
  // A node's own cell that nothing probed (the diagonal, unknown): a host
  // agent does not ping its own node. Shown as a dash, not counted.
  const NOT_PROBED = 5;
  const STATUS = ["ok", "degraded", "failed", "unknown", undefined, "not-probed"];
  const COLORS = ["#2f9e5b", "#e3a008", "#d64545", "#b9c0c8", "#f1f3f6", "#ffffff"];
  const GLYPHS = ["✓", "!", "✗", "?", "", "–"];
  const GLYPH_COLORS = ["#ffffff", "#1d2330", "#ffffff", "#1d2330", "", "#9ca3af"];
  const ZOOMS = [2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56];
  const FONT = '"DejaVu Sans", system-ui, sans-serif';

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  // A cause not known because facts were not (yet) received, as opposed to
  // facts that were checked and explain nothing.
  const unknownSoFar = (nodes) =>
    "unknown so far: no network facts from " + nodes.join(", ") +
    " yet (a host agent sends them with its next report when asked; none without hostAgent.enabled)";

  const state = {
    nodes: [],
    columns: [],
    sections: [], // {name, title, rows, index, R, W, codes, ring, head, count, y0}
    findings: [],
    findingNodes: new Set(),
    updates: 0,
    generated: 0,
    error: null,
    zoom: null, // null: fit
    cs: 16,
    layout: null,
    hover: null,
    selected: null,
    pollMs: 1000,
    lastOk: 0,
  };

  // ---- data ---------------------------------------------------------------

  function buildSection(name, title, rows, old) {
    const N = state.nodes.length;
    const K = state.columns.length;
    const W = N + K;
    const R = rows.length;
    const codes = new Uint8Array(R * W);
    const index = new Map();
    rows.forEach((row, r) => {
      index.set(row.node, r);
      const base = r * W;
      const s = row.status;
      for (let c = 0; c < N; c++) {
        const code = CODE[s[c]];
        const unknown = code === undefined || code === 3;
        codes[base + c] = unknown && state.nodes[c] === row.node ? NOT_PROBED : unknown ? 3 : code;
      }
      const k = row.checks || "";
      for (let j = 0; j < K; j++) {
        const code = CODE[k[j]];
        codes[base + N + j] = code === undefined ? NONE : code;
      }
    });
    const key = state.nodes.join("\n") + "|" + state.columns.join("\n") + "|" +
      rows.map((r) => r.node).join("\n");
    let ring, head = 0, count = 0;
    if (old && old.key === key) {
      ({ ring, head, count } = old);
    } else {
      ring = new Uint8Array(HISTORY * R * W);
    }
    head = (head + 1) % HISTORY;
    ring.set(codes, head * R * W);
    count = Math.min(count + 1, HISTORY);
    return { name, title, rows, index, R, W, N, K, codes, ring, head, count, key, y0: 0 };
  }

  function applyMatrix(m) {
    const nodesChanged = m.nodes.join("\n") !== state.nodes.join("\n");
    state.nodes = m.nodes;
    state.nodeIndex = new Map(m.nodes.map((n, i) => [n, i]));
    state.columns = m.columns || [];
    const old = new Map(state.sections.map((s) => [s.name, s]));
    const sections = [buildSection("pod", "pod network", m.rows, old.get("pod"))];
    if (m.host_rows && m.host_rows.length) {
      sections.push(buildSection("host", "host network", m.host_rows, old.get("host")));
    }
    state.sections = sections;
    state.generated = m.generated_unix_ms;
    const shape = state.nodes.length + "|" + state.columns.join("\n") + "|" +
      sections.map((s) => s.name + s.R).join(",");
    if (nodesChanged || shape !== state.shape) state.layout = null;
    state.shape = shape;
    if (state.layout) placeSections(state.layout);
  }

  function section(network) {
    return state.sections.find((s) => s.name === (network || "pod"));
  }

  function codeAt(sec, r, c) {
    return sec.codes[r * sec.W + c];
  }

  function cellInfo(sec, r, c) {
    const row = sec.rows[r];
    const code = codeAt(sec, r, c);
    if (c < sec.N) {
      const err = (row.errors || []).find((e) => e.i === c);
      return {
        kind: "cell", network: sec.name, from: row.node, to: state.nodes[c], r, c, code,
        loss: row.loss_pct[c], rtt: row.rtt_avg_us[c], error: err, row,
      };
    }
    const j = c - sec.N;
    const err = (row.check_errors || []).find((e) => e.i === j);
    return {
      kind: "check", network: sec.name, from: row.node, column: state.columns[j], r, c, code,
      latency: row.check_latency_us[j], error: err, row,
    };
  }

  function historyOf(sec, r, c) {
    const out = [];
    const size = sec.R * sec.W;
    for (let k = sec.count - 1; k >= 0; k--) {
      const frame = (sec.head - k + HISTORY) % HISTORY;
      out.push(sec.ring[frame * size + r * sec.W + c]);
    }
    return out;
  }

  // ---- formatting ---------------------------------------------------------

  // "1 finding", "2 findings".
  const plural = (n, one, many) => n + " " + (n === 1 ? one : many);
  const fmtMs = (us) => (us < 0 ? "—" : us < 10000 ? (us / 1000).toFixed(2) + " ms" : (us / 1000).toFixed(1) + " ms");
  const fmtLoss = (p) => (p < 0 ? "—" : p + " %");
  const fmtErr = (e) => (e ? e.kind + ": " + e.message : "");
  const fmtAge = (ms) => (ms === undefined || ms === null ? "—" : ms < 10000 ? (ms / 1000).toFixed(1) + " s" : Math.round(ms / 1000) + " s");
  const shortColumn = (c) => {
    const s = c.replace(/\.svc\.cluster\.local\.?$/, "").replace(/\.$/, "");
    return s.length > 24 ? s.slice(0, 23) + "…" : s;
  };

  // ---- layout and drawing -------------------------------------------------

  const scroller = $("scroller");
  const sizer = $("sizer");
  const canvas = $("heatmap");
  const ctx = canvas.getContext("2d");
  const tooltip = $("tooltip");

  function labelFont(cs) {
    return Math.max(10, Math.min(13, Math.floor(cs * 0.8))) + "px " + FONT;
  }

  function textWidth(texts, font) {
    ctx.font = font;
    let w = 0;
    for (const t of texts) w = Math.max(w, ctx.measureText(t).width);
    return w;
  }

  function computeLayout() {
    const N = state.nodes.length;
    const K = state.columns.length;
    const vw = scroller.clientWidth;
    const vh = scroller.clientHeight;
    const rowsTotal = state.sections.reduce((a, s) => a + s.R, 0);
    const font = "13px " + FONT; // the largest label font
    const labelW = Math.ceil(Math.min(220, Math.max(118, textWidth(state.nodes.map((n) => n + " (not-ready)"), font) + 18)));
    const colTexts = state.nodes.concat(state.columns.map(shortColumn));
    const labelH = Math.ceil(Math.min(200, Math.max(60, textWidth(colTexts, font) + 26)));
    const gapR = 34;
    let cs;
    if (state.zoom) {
      cs = state.zoom;
    } else {
      const cols = N + K + (K ? 1 : 0);
      const rows = rowsTotal + (state.sections.length - 1) * 2;
      const fit = Math.floor(Math.min((vw - labelW - 24) / Math.max(cols, 1), (vh - labelH - gapR - 12) / Math.max(rows, 1)));
      cs = Math.max(N <= 150 ? 14 : 2, Math.min(56, fit));
    }
    const gapC = K ? Math.max(12, Math.round(cs * 0.6)) : 0;
    const L = { N, K, cs, labelW, labelH, gapC, gapR };
    const y = placeSections(L);
    const width = labelW + N * cs + gapC + K * cs + 16;
    const height = y + 16;
    state.cs = cs;
    state.layout = L;
    sizer.style.width = Math.max(width, vw) + "px";
    sizer.style.height = Math.max(height, vh) + "px";
  }

  // Sets each section's top and returns the bottom of the last one.
  function placeSections(L) {
    let y = L.labelH;
    state.sections.forEach((s, i) => {
      if (i > 0) y += L.gapR;
      s.y0 = y;
      y += s.R * L.cs;
    });
    return y;
  }

  function colX(L, c) {
    return L.labelW + (c < L.N ? c * L.cs : L.N * L.cs + L.gapC + (c - L.N) * L.cs);
  }

  let pending = false;
  function redraw() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      draw();
    });
  }

  function draw() {
    if (!state.sections.length) return;
    if (!state.layout) computeLayout();
    const L = state.layout;
    const vw = scroller.clientWidth;
    const vh = scroller.clientHeight;
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(vw * dpr) || canvas.height !== Math.round(vh * dpr)) {
      canvas.width = Math.round(vw * dpr);
      canvas.height = Math.round(vh * dpr);
      canvas.style.width = vw + "px";
      canvas.style.height = vh + "px";
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, vw, vh);
    const sx = scroller.scrollLeft;
    const sy = scroller.scrollTop;
    const cs = L.cs;
    const pad = cs >= 6 ? 1 : 0;
    const W = L.N + L.K;

    // Cells.
    ctx.save();
    ctx.beginPath();
    ctx.rect(L.labelW, L.labelH, vw - L.labelW, vh - L.labelH);
    ctx.clip();
    let cFirst = 0, cLast = -1;
    for (let c = 0; c < W; c++) {
      const x = colX(L, c) - sx;
      if (x + cs < L.labelW) cFirst = c + 1;
      else if (x <= vw) cLast = c;
    }
    const textInCells = cs >= 40;
    for (const sec of state.sections) {
      const r0 = Math.max(0, Math.floor((sy + L.labelH - sec.y0) / cs));
      const r1 = Math.min(sec.R - 1, Math.floor((sy + vh - sec.y0) / cs));
      for (let r = r0; r <= r1; r++) {
        const y = sec.y0 + r * cs - sy;
        let last = -1;
        for (let c = cFirst; c <= cLast; c++) {
          const code = sec.codes[r * sec.W + c];
          if (code !== last) { ctx.fillStyle = COLORS[code]; last = code; }
          ctx.fillRect(colX(L, c) - sx + pad, y + pad, cs - pad, cs - pad);
        }
        if (cs >= 8) {
          // The status's symbol; from 40 px, with the cell's number under
          // it: mean RTT (ok), or loss (degraded, failed).
          ctx.textAlign = "center";
          ctx.textBaseline = "middle";
          const glyphFont = (textInCells ? 13 : Math.floor(cs * 0.7)) + "px " + FONT;
          for (let c = cFirst; c <= cLast; c++) {
            const info = cellInfo(sec, r, c);
            if (info.code === NONE) continue;
            const cx = colX(L, c) - sx + (cs + pad) / 2;
            const cy = y + (cs + pad) / 2;
            let t = "";
            if (textInCells && info.kind === "cell") {
              t = info.code === 2 || info.code === 1 ? fmtLoss(info.loss) : info.code === 0 && info.rtt >= 0 ? (info.rtt / 1000).toFixed(2) + (cs >= 52 ? " ms" : "") : "";
            } else if (textInCells) {
              t = info.code === 0 ? "ok" : info.code === 2 ? "fail" : "";
            }
            ctx.fillStyle = GLYPH_COLORS[info.code];
            ctx.font = glyphFont;
            ctx.fillText(GLYPHS[info.code], cx, t ? cy - 8 : cy);
            if (t) {
              ctx.font = "11px " + FONT;
              ctx.fillText(t, cx, cy + 8);
            }
          }
        }
      }
    }
    // Crosshair on the hovered cell's row and column, outline on the selection.
    const h = state.hover;
    if (h && h.sec) {
      ctx.fillStyle = "rgba(29, 35, 48, 0.08)";
      const y = h.sec.y0 + h.r * cs - sy;
      ctx.fillRect(L.labelW, y, vw, cs + pad);
      const x = colX(L, h.c) - sx;
      ctx.fillRect(x, L.labelH, cs + pad, vh);
    }
    const s = state.selected && section(state.selected.network);
    if (s) {
      const r = s.index.get(state.selected.from);
      const c = state.selected.c;
      if (r !== undefined && c < W) {
        ctx.strokeStyle = "#1d2330";
        ctx.lineWidth = 2;
        ctx.strokeRect(colX(L, c) - sx + 1, s.y0 + r * cs - sy + 1, cs - 1, cs - 1);
      }
    }
    ctx.restore();

    // Row labels, pinned left.
    const labelStep = Math.max(1, Math.ceil(13 / cs));
    ctx.save();
    ctx.beginPath();
    ctx.rect(0, L.labelH, L.labelW, vh - L.labelH);
    ctx.clip();
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, L.labelH, L.labelW, vh - L.labelH);
    ctx.font = labelFont(cs);
    ctx.textBaseline = "middle";
    for (const sec of state.sections) {
      if (sec.y0 > L.labelH) {
        const ty = sec.y0 - sy - 10;
        ctx.fillStyle = "#6b7280";
        ctx.textAlign = "left";
        ctx.font = "600 11px " + FONT;
        ctx.fillText(sec.title.toUpperCase(), 8, ty);
        ctx.font = labelFont(cs);
      }
      const r0 = Math.max(0, Math.floor((sy + L.labelH - sec.y0) / cs));
      const r1 = Math.min(sec.R - 1, Math.floor((sy + vh - sec.y0) / cs));
      for (let r = r0; r <= r1; r++) {
        if (r % labelStep) continue;
        const row = sec.rows[r];
        const y = sec.y0 + r * cs - sy + cs / 2 + 0.5;
        const bad = state.findingNodes.has(row.node);
        ctx.fillStyle = !row.reporting ? "#9ca3af" : bad ? "#c53030" : "#1d2330";
        ctx.textAlign = "right";
        const mark = row.state && row.state !== "ready" ? " (" + row.state + ")" : "";
        ctx.fillText(row.node + mark, L.labelW - 8, y);
      }
    }
    ctx.restore();

    // Column labels, pinned top, written bottom-up.
    ctx.save();
    ctx.beginPath();
    ctx.rect(L.labelW, 0, vw - L.labelW, L.labelH);
    ctx.clip();
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(L.labelW, 0, vw - L.labelW, L.labelH);
    ctx.font = labelFont(cs);
    ctx.textBaseline = "middle";
    ctx.textAlign = "left";
    for (let c = cFirst; c <= cLast; c++) {
      if (c < L.N ? c % labelStep : (c - L.N) % labelStep) continue;
      const x = colX(L, c) - sx + cs / 2 + 0.5;
      const isNode = c < L.N;
      const text = isNode ? state.nodes[c] : shortColumn(state.columns[c - L.N]);
      ctx.fillStyle = isNode ? (state.findingNodes.has(text) ? "#c53030" : "#1d2330") : "#4b5563";
      ctx.save();
      ctx.translate(x, L.labelH - 8);
      ctx.rotate(-Math.PI / 2);
      ctx.fillText(text, 0, 0);
      ctx.restore();
    }
    ctx.restore();

    // Corner.
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, L.labelW, L.labelH);
    ctx.fillStyle = "#6b7280";
    ctx.font = "600 11px " + FONT;
    ctx.textAlign = "left";
    ctx.textBaseline = "alphabetic";
    ctx.fillText("FROM ↓  TO →", 8, L.labelH - 30);
    if (state.sections[0]) ctx.fillText(state.sections[0].title.toUpperCase(), 8, L.labelH - 12);
    ctx.strokeStyle = "#e3e6eb";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(0, L.labelH - 0.5);
    ctx.lineTo(vw, L.labelH - 0.5);
    ctx.moveTo(L.labelW - 0.5, 0);
    ctx.lineTo(L.labelW - 0.5, vh);
    ctx.stroke();
  }

  function hit(ev) {
    const L = state.layout;
    if (!L) return null;
    const rect = canvas.getBoundingClientRect();
    const x = ev.clientX - rect.left;
    const y = ev.clientY - rect.top;
    if (x < L.labelW || y < L.labelH) return null;
    const cx = x + scroller.scrollLeft;
    const cy = y + scroller.scrollTop;
    let c;
    const nodeEnd = L.labelW + L.N * L.cs;
    if (cx < nodeEnd) c = Math.floor((cx - L.labelW) / L.cs);
    else {
      const off = cx - nodeEnd - L.gapC;
      if (off < 0) return null;
      c = L.N + Math.floor(off / L.cs);
      if (c >= L.N + L.K) return null;
    }
    for (const sec of state.sections) {
      const r = Math.floor((cy - sec.y0) / L.cs);
      if (cy >= sec.y0 && r < sec.R) return { sec, r, c, x, y };
    }
    return null;
  }

  // ---- tooltip and details ------------------------------------------------

  function describe(info) {
    const lines = [];
    if (info.kind === "cell") {
      lines.push(info.from + " → " + info.to + "  (" + info.network + ")");
      lines.push(info.code === NOT_PROBED
        ? "not probed (a host agent does not ping its own node)"
        : GLYPHS[info.code] + " " + STATUS[info.code] + " · loss " + fmtLoss(info.loss) + " · RTT " + fmtMs(info.rtt));
    } else {
      lines.push(info.from + " · " + info.column + "  (" + info.network + ")");
      lines.push(info.code === NONE ? "not checked on this node" : GLYPHS[info.code] + " " + STATUS[info.code] + " · latency " + fmtMs(info.latency));
    }
    if (info.error) lines.push("last error: " + fmtErr(info.error));
    return lines;
  }

  function showTooltip(h) {
    if (!h) { tooltip.hidden = true; return; }
    const info = cellInfo(h.sec, h.r, h.c);
    tooltip.textContent = "";
    describe(info).forEach((line, i) => {
      if (i) tooltip.appendChild(document.createElement("br"));
      tooltip.appendChild(i === 0 ? el("b", null, line) : document.createTextNode(line));
    });
    tooltip.hidden = false;
    const pane = tooltip.parentElement.getBoundingClientRect();
    const tw = tooltip.offsetWidth;
    const th = tooltip.offsetHeight;
    let left = h.x + 14;
    let top = h.y + 14;
    if (left + tw > pane.width - 4) left = h.x - tw - 10;
    if (top + th > pane.height - 4) top = h.y - th - 10;
    tooltip.style.left = Math.max(4, left) + "px";
    tooltip.style.top = Math.max(4, top) + "px";
  }

  function pill(code) {
    if (code === NONE) return el("span", "pill unknown", "not checked");
    if (code === NOT_PROBED) return el("span", "pill not-probed", "– not probed");
    return el("span", "pill " + STATUS[code], GLYPHS[code] + " " + STATUS[code]);
  }

  let detailSeq = 0;
  function renderDetails() {
    const box = $("details");
    const sel = state.selected;
    const sec = sel && section(sel.network);
    const r = sec ? sec.index.get(sel.from) : undefined;
    if (!sec || r === undefined || sel.c >= sec.W) {
      box.replaceChildren(el("p", "muted", "Click a cell for its details and recent history."));
      return;
    }
    const info = cellInfo(sec, r, sel.c);
    const title = el("h3", null, info.kind === "cell" ? info.from + " → " + info.to + " " : info.from + " · " + info.column + " ");
    title.appendChild(el("small", null, info.network + " network"));
    const dl = el("dl");
    const add = (k, v) => {
      dl.appendChild(el("dt", null, k));
      const dd = el("dd");
      if (v instanceof Node) dd.appendChild(v); else dd.textContent = v;
      dl.appendChild(dd);
      return dd;
    };
    add("status", pill(info.code));
    if (info.kind === "cell") {
      add("loss", fmtLoss(info.loss));
      add("RTT avg", fmtMs(info.rtt));
      const extra = add("RTT max · pods", "…");
      const mtu = add("MTU probe", "…");
      // Each protocol's own status (the path's is the best of them), and
      // the probes a NetworkPolicy keeps out.
      const protocols = add("ICMP · TCP · UDP", "…");
      const blocked = add("NetworkPolicy", "…");
      // Pods that answered nothing while their neighbours answered.
      const unanswered = add("pods answering nothing", "…");
      const age = add("data age", "…");
      const seq = ++detailSeq;
      const q = "?from=" + encodeURIComponent(info.from) + "&to=" + encodeURIComponent(info.to) + "&network=" + info.network;
      fetch(CELL + q, { cache: "no-store" }).then((r) => (r.ok ? r.json() : null)).then((cell) => {
        if (seq !== detailSeq || !cell) return;
        extra.textContent = (cell.rtt_max_ms !== undefined ? cell.rtt_max_ms.toFixed(2) + " ms" : "—") + " · " + cell.pods;
        mtu.textContent = cell.mtu || "not probed";
        protocols.textContent = cell.tcp || cell.udp
          ? [cell.icmp, cell.tcp, cell.udp].map((s) => s || "—").join(" · ")
          : "ICMP only";
        blocked.textContent = cell.blocked
          ? cell.blocked.protocols.join(", ") + " denied by " + cell.blocked.policies.join(", ")
          : "none";
        unanswered.textContent = (cell.unanswered || [])
          .map((p) => (p.pod ? p.pod + " (" + p.ip + ")" : p.ip)).join(", ") || "none";
        age.textContent = fmtAge(cell.age_ms);
      }).catch(() => {});
    } else {
      add("latency", fmtMs(info.latency));
    }
    add("last error", info.error ? fmtErr(info.error) : "none");
    add("source node", info.row.state + (info.row.reporting ? ", reporting" : ", NOT reporting") +
      (info.row.relayed_by ? " (relayed by " + info.row.relayed_by + ": its agent cannot reach the aggregator)" : "") +
      (info.row.report_age_ms !== undefined ? " (last report " + fmtAge(info.row.report_age_ms) + " ago)" : ""));
    const hist = historyOf(sec, r, sel.c);
    const strip = el("div", "history");
    strip.setAttribute("aria-label", "history, oldest first");
    for (const code of hist) {
      const b = el("i", "h " + (code === NONE ? "none" : STATUS[code]));
      b.title = code === NONE ? "not checked" : code === NOT_PROBED ? "not probed" : STATUS[code];
      strip.appendChild(b);
    }
    const histLabel = el("p", "muted", "last " + plural(hist.length, "poll", "polls") + ", oldest first");
    // The source node's own network, as its host agent read it.
    const facts = el("div", "facts");
    facts.appendChild(el("h4", null, info.from + "'s network"));
    const factsBody = el("p", "muted", "…");
    facts.appendChild(factsBody);
    box.replaceChildren(title, dl, histLabel, strip, facts);
    const factsSeq = detailSeq;
    fetch(FACTS + "?node=" + encodeURIComponent(info.from), { cache: "no-store" })
      .then((r) => (r.ok ? r.json() : null))
      .then((f) => {
        if (factsSeq !== detailSeq) return;
        if (!f) { factsBody.textContent = "no facts: no host-network agent reports for this node"; return; }
        const ul = el("ul");
        ul.appendChild(el("li", null, "net.ipv4.ip_forward = " + (f.ip_forward === undefined ? "?" : f.ip_forward ? 1 : 0) +
          ", rp_filter = " + (f.rp_filter === undefined ? "?" : f.rp_filter)));
        for (const l of f.links || []) {
          ul.appendChild(el("li", l.up ? null : "down", l.name + " " + (l.kind || "device") + " " + (l.up ? "up" : "DOWN") + " mtu " + l.mtu));
        }
        ul.appendChild(el("li", null, (f.routes || []).length + " routes, " + (f.fdb || []).length + " FDB entries, " +
          (f.neighbours || []).length + " neighbour entries on overlay devices"));
        factsBody.replaceWith(ul);
      }).catch(() => {});
  }

  function select(from, to, network) {
    network = network || "pod";
    const sec = section(network);
    if (!sec) return false;
    let c = state.nodeIndex.get(to);
    if (c === undefined) {
      const j = state.columns.indexOf(to);
      if (j < 0) return false;
      c = sec.N + j;
    }
    state.selected = { network, from, c };
    renderDetails();
    redraw();
    return true;
  }

  // ---- findings, summary, accessible table --------------------------------

  const WARN_KINDS = new Set(["packet-loss", "high-latency", "dns-stale", "agent-missing"]);
  // Information: the network works, a protocol or a policy keeps some
  // probes out.
  const INFO_KINDS = new Set(["icmp-filtered", "tcp-filtered", "udp-filtered", "blocked-by-policy"]);

  function renderFindings() {
    const list = $("findings");
    const count = $("findings-count");
    count.textContent = String(state.findings.length);
    count.title = plural(state.findings.length, "finding", "findings");
    count.classList.toggle("bad", state.findings.length > 0);
    if (!state.findings.length) {
      list.replaceChildren(el("li", "none", "No findings: every check passes."));
      return;
    }
    list.replaceChildren(...state.findings.map((f) => {
      const li = el("li", "finding" + (WARN_KINDS.has(f.kind) ? " warn" : INFO_KINDS.has(f.kind) ? " info" : ""));
      li.dataset.kind = f.kind;
      li.dataset.nodes = f.nodes.join(",");
      const head = el("div", "f-head");
      head.appendChild(el("span", "kind", f.kind));
      for (const n of f.nodes) head.appendChild(el("span", "nodes", n));
      if (f.flapping) {
        const flap = el("span", "flapping", "flapping");
        flap.title = "it cleared and came back: held until it stays away for the flap window";
        head.appendChild(flap);
      }
      const since = el("span", "since", "since " + new Date(f.since_unix_ms).toLocaleTimeString());
      since.title = f.since;
      head.appendChild(since);
      li.appendChild(head);
      li.appendChild(el("p", "f-summary", f.summary));
      // Why, from the nodes' own network facts; unknown is said, not guessed.
      const cause = el("div", "cause");
      cause.appendChild(el("b", null, "Cause: "));
      if (f.cause && f.cause.length) {
        const ul = el("ul");
        for (const c of f.cause) ul.appendChild(el("li", null, c));
        cause.appendChild(ul);
      } else if (f.facts_missing && f.facts_missing.length) {
        cause.appendChild(el("span", "unknown", unknownSoFar(f.facts_missing)));
      } else {
        cause.appendChild(el("span", "unknown", "unknown (nothing in the nodes' network facts explains it)"));
      }
      li.appendChild(cause);
      const hint = el("p", "hint");
      hint.appendChild(el("b", null, "Check: "));
      hint.appendChild(document.createTextNode(f.hint));
      li.appendChild(hint);
      if (f.evidence && f.evidence.length) {
        const d = el("details");
        d.appendChild(el("summary", null, "evidence (" + plural(f.evidence.length, "line", "lines") + ")"));
        const ul = el("ul");
        for (const e of f.evidence) ul.appendChild(el("li", null, e));
        d.appendChild(ul);
        li.appendChild(d);
      }
      return li;
    }));
  }

  function renderSummary() {
    const box = $("summary");
    box.textContent = "";
    const N = state.nodes.length;
    box.appendChild(el("b", null, plural(N, "node", "nodes")));
    for (const sec of state.sections) {
      // Not-probed cells (a node's own, for a host agent) are no status:
      // they are left out of the counts.
      const n = [0, 0, 0, 0, 0, 0];
      for (let r = 0; r < sec.R; r++) {
        for (let c = 0; c < sec.N; c++) n[sec.codes[r * sec.W + c]]++;
      }
      const parts = [n[0] + " ok"];
      if (n[1]) parts.push(n[1] + " degraded");
      if (n[2]) parts.push(n[2] + " failed");
      if (n[3]) parts.push(n[3] + " unknown");
      box.appendChild(document.createTextNode(" · " + sec.name + ": "));
      box.appendChild(el("span", n[1] || n[2] ? "bad" : "", parts.join(", ")));
    }
  }

  function renderTable() {
    const table = $("cells");
    if (state.nodes.length > TABLE_MAX_NODES) {
      table.replaceChildren();
      return;
    }
    const body = el("tbody");
    for (const sec of state.sections) {
      const head = el("tr");
      head.appendChild(el("th", null, sec.title + ": from \\ to"));
      for (const n of state.nodes) head.appendChild(el("th", null, n));
      body.appendChild(head);
      sec.rows.forEach((row, r) => {
        const tr = el("tr");
        tr.appendChild(el("th", null, row.node));
        for (let c = 0; c < sec.N; c++) {
          const status = STATUS[sec.codes[r * sec.W + c]];
          const td = el("td", null, status === "not-probed" ? "not probed" : status);
          td.dataset.network = sec.name;
          td.dataset.from = row.node;
          td.dataset.to = state.nodes[c];
          td.dataset.status = status;
          tr.appendChild(td);
        }
        body.appendChild(tr);
      });
    }
    table.replaceChildren(body);
  }

  // ---- polling ------------------------------------------------------------

  async function getJson(path) {
    const response = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }

  function setLive() {
    const live = $("live");
    if (state.error) {
      document.body.dataset.state = "error";
      live.textContent = "aggregator unreachable, retrying";
      live.title = state.error;
    } else {
      document.body.dataset.state = "live";
      const t = state.generated ? new Date(state.generated).toLocaleTimeString() : "";
      live.textContent = "live · " + t;
      live.title = "matrix generated at " + t;
    }
  }

  async function poll() {
    try {
      const [m, f] = await Promise.all([getJson(MATRIX_COMPACT), getJson(FINDINGS)]);
      applyMatrix(m);
      state.findings = f.findings || [];
      state.findingNodes = new Set(state.findings.flatMap((x) => x.nodes));
      state.error = null;
      state.updates++;
      const N = state.nodes.length;
      state.pollMs = N <= 200 ? 1000 : N <= 500 ? 2000 : 5000;
      $("poll").textContent = String(state.pollMs / 1000);
      renderSummary();
      renderFindings();
      renderTable();
      if (state.selected) renderDetails();
      if (state.hover) showTooltip(state.hover.sec ? { ...state.hover, sec: section(state.hover.sec.name) } : null);
      redraw();
    } catch (e) {
      state.error = String(e && e.message ? e.message : e);
    }
    setLive();
    setTimeout(poll, state.pollMs);
  }

  // ---- events -------------------------------------------------------------

  function zoomTo(cs) {
    const L = state.layout;
    if (!L) return;
    // Keep the cell at the viewport's centre in place.
    const cx = (scroller.scrollLeft + scroller.clientWidth / 2 - L.labelW) / L.cs;
    const cy = (scroller.scrollTop + scroller.clientHeight / 2 - L.labelH) / L.cs;
    state.zoom = cs;
    computeLayout();
    scroller.scrollLeft = cx * cs + L.labelW - scroller.clientWidth / 2;
    scroller.scrollTop = cy * cs + L.labelH - scroller.clientHeight / 2;
    redraw();
  }

  function zoomStep(dir) {
    const cs = state.cs;
    const next = dir > 0 ? ZOOMS.find((z) => z > cs) : [...ZOOMS].reverse().find((z) => z < cs);
    if (next) zoomTo(next);
  }

  $("zoom-in").addEventListener("click", () => zoomStep(1));
  $("zoom-out").addEventListener("click", () => zoomStep(-1));
  $("zoom-fit").addEventListener("click", () => {
    state.zoom = null;
    state.layout = null;
    redraw();
  });
  scroller.addEventListener("wheel", (ev) => {
    if (!ev.ctrlKey) return;
    ev.preventDefault();
    zoomStep(ev.deltaY < 0 ? 1 : -1);
  }, { passive: false });
  scroller.addEventListener("scroll", () => {
    tooltip.hidden = true;
    redraw();
  });
  window.addEventListener("resize", () => {
    state.layout = null;
    redraw();
  });
  canvas.addEventListener("mousemove", (ev) => {
    const h = hit(ev);
    const same = h && state.hover && state.hover.sec === h.sec && state.hover.r === h.r && state.hover.c === h.c;
    state.hover = h;
    showTooltip(h);
    if (!same) redraw();
  });
  canvas.addEventListener("mouseleave", () => {
    state.hover = null;
    tooltip.hidden = true;
    redraw();
  });
  canvas.addEventListener("click", (ev) => {
    const h = hit(ev);
    if (!h) return;
    state.selected = { network: h.sec.name, from: h.sec.rows[h.r].node, c: h.c };
    renderDetails();
    redraw();
  });

  // ---- contract -----------------------------------------------------------

  const api = {
    get updates() { return state.updates; },
    get generatedUnixMs() { return state.generated; },
    get error() { return state.error; },
    nodes: () => state.nodes.slice(),
    cellStatus(from, to, network) {
      const sec = section(network);
      const r = sec && sec.index.get(from);
      const c = state.nodeIndex && state.nodeIndex.get(to);
      if (r === undefined || c === undefined) return null;
      return STATUS[codeAt(sec, r, c)];
    },
    checkStatus(node, column, network) {
      const sec = section(network);
      const r = sec && sec.index.get(node);
      const j = state.columns.indexOf(column);
      if (r === undefined || j < 0) return null;
      const code = codeAt(sec, r, sec.N + j);
      return code === NONE ? null : STATUS[code];
    },
    findings: () => state.findings.map((f) => ({ kind: f.kind, nodes: f.nodes.slice(), summary: f.summary })),
    history(from, to, network) {
      const sec = section(network);
      const r = sec && sec.index.get(from);
      const c = state.nodeIndex && state.nodeIndex.get(to);
      if (r === undefined || c === undefined) return null;
      return historyOf(sec, r, c).map((code) => STATUS[code]);
    },
    select,
  };
  window.netmatrix = api;
  poll();
})();
