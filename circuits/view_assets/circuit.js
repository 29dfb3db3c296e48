/* The interactive circuit view; circuits/html.py inlines this file and the circuit's data.

   Nodes are SVG elements, one <g class="node"> per circuit node (the metric too); edges are
   drawn on a canvas beneath them, only those above the edge slider whose two nodes are shown,
   in a few batches by sign and strength, at most once per animation frame. Edges arrive sorted
   by |weight|, so the edges above a threshold are a prefix of the list (a binary search).
   Everything taken from the data is written as text (textContent), never as markup. */
(function () {
  "use strict";
  const started = performance.now();
  const data = JSON.parse(document.getElementById("circuit-data").textContent);
  const nodes = data.nodes;
  const edges = data.edges; // [source index, target index, weight], |weight| descending
  const N = nodes.length;
  const E = edges.length;
  const SVGNS = "http://www.w3.org/2000/svg";
  const SLIDER = 1000; // slider steps
  const DEFAULT_EDGES = 2000; // edges shown on opening (the strongest), at most
  const LEVELS = 8; // strength batches per sign
  const $ = (id) => document.getElementById(id);

  const byId = new Map(nodes.map((n, i) => [n.id, i]));
  const incoming = nodes.map(() => []);
  const outgoing = nodes.map(() => []);
  edges.forEach((e, i) => {
    outgoing[e[0]].push(i); // each list in |weight| order, as the edges are
    incoming[e[1]].push(i);
  });
  const topWeight = E ? Math.abs(edges[0][2]) : 1;

  const state = {
    nodeMin: 0,
    edgeMin: 0,
    edgeCut: E, // edges[0 .. edgeCut) are above the edge threshold
    selected: -1,
    hovered: -1,
    zoom: 1,
  };
  const shown = new Uint8Array(N); // node above the node threshold
  let path = null; // {nodes: Uint8Array, edges: Uint8Array} through the selected node

  document.documentElement.style.setProperty("--positive", data.colors.positive);
  document.documentElement.style.setProperty("--negative", data.colors.negative);

  // ---- the drawing ------------------------------------------------------------------------
  const box = $("graph-box");
  const svg = $("graph");
  const canvas = $("edges");
  const ctx = canvas.getContext("2d");
  svg.setAttribute("viewBox", `0 0 ${data.width} ${data.height}`);

  function el(name, attrs, parent) {
    const e = document.createElementNS(SVGNS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  const decoration = el("g", { class: "decoration" }, svg);
  data.rows.forEach((r) => {
    const t = el("text", { x: r.x, y: r.y, class: "row-label" }, decoration);
    t.textContent = r.label;
  });
  data.columns.forEach((c) => {
    const t = el("text", { x: c.x, y: c.y, class: "token-label" }, decoration);
    t.textContent = show(c.label);
  });

  const layer = el("g", { class: "nodes" }, svg);
  const elements = nodes.map((n, i) => {
    const g = el("g", { class: `node ${n.role}`, "data-id": n.id, "data-index": i,
                        transform: `translate(${n.x},${n.y})` }, layer);
    const w = n.w, h = n.h;
    if (n.role === "metric") {
      const a = w / 2, b = h / 2, c = Math.min(a, b) * 0.45;
      const pts = [[-a + c, -b], [a - c, -b], [a, -b + c], [a, b - c], [a - c, b], [-a + c, b],
                   [-a, b - c], [-a, -b + c]];
      el("polygon", { points: pts.map((p) => p.join(",")).join(" "), fill: n.fill }, g);
    } else if (n.box) {
      el("rect", { x: -w / 2, y: -h / 2, width: w, height: h, rx: 2, fill: n.fill }, g);
    } else {
      el("ellipse", { rx: w / 2, ry: h / 2, fill: n.fill }, g);
    }
    const t = el("text", { class: n.dark ? "dark" : "" }, g);
    t.textContent = n.text;
    return g;
  });

  function resize() {
    const w = data.width * state.zoom, h = data.height * state.zoom;
    box.style.width = `${w}px`;
    box.style.height = `${h}px`;
    // the canvas' backing store: sharp on high-density screens, within browsers' limits
    const dpr = Math.min(window.devicePixelRatio || 1, 16000 / Math.max(w, h, 1));
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    canvas.style.width = `${w}px`;
    canvas.style.height = `${h}px`;
    ctx.setTransform(dpr * state.zoom, 0, 0, dpr * state.zoom, 0, 0);
    schedule();
  }

  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      draw();
    });
  }

  function visible(i) {
    const e = edges[i];
    return i < state.edgeCut && shown[e[0]] && shown[e[1]];
  }

  function draw() {
    const t0 = performance.now();
    ctx.save();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.restore();
    ctx.fillStyle = "#f4f5f7";
    data.rows.forEach((r, k) => {
      if (r.top !== null && k % 2 === 0) ctx.fillRect(0, r.top, data.width, r.bottom - r.top);
    });
    // each shown edge is drawn strong (an edge of the hovered or selected node), plain (on a
    // path through the selected node, or everything when no node is), or dim (the rest)
    const focus = state.selected >= 0 ? state.selected : state.hovered;
    const STRONG = 2, PLAIN = 1;
    let count = 0, plain = 0;
    const kind = new Uint8Array(state.edgeCut);
    for (let i = 0; i < state.edgeCut; i++) {
      if (!visible(i)) continue;
      count++;
      const e = edges[i];
      kind[i] = focus < 0 ? PLAIN : e[0] === focus || e[1] === focus ? STRONG
        : path && path.edges[i] ? PLAIN : 0;
      if (kind[i] === PLAIN) plain++;
    }
    const faint = plain <= 500 ? 0.25 : 0.08; // many edges: the weak ones recede (as render)
    const batches = [[], [], []].map(() => []);
    for (const k of [PLAIN, STRONG]) {
      for (let b = 0; b < 2 * LEVELS; b++) batches[k].push(new Path2D());
    }
    const dim = new Path2D();
    for (let i = 0; i < state.edgeCut; i++) {
      if (!visible(i)) continue;
      const e = edges[i], s = nodes[e[0]], t = nodes[e[1]];
      if (!kind[i]) {
        dim.moveTo(s.x, s.y);
        dim.lineTo(t.x, t.y);
        continue;
      }
      const level = Math.min(LEVELS - 1, Math.floor((Math.abs(e[2]) / topWeight) * LEVELS));
      const b = batches[kind[i]][(e[2] > 0 ? 0 : LEVELS) + level];
      b.moveTo(s.x, s.y);
      b.lineTo(t.x, t.y);
    }
    ctx.lineCap = "round";
    ctx.strokeStyle = "rgba(120,120,120,0.07)";
    ctx.lineWidth = 0.6;
    ctx.stroke(dim);
    for (const k of [PLAIN, STRONG]) {
      for (let b = 0; b < 2 * LEVELS; b++) {
        const t = ((b % LEVELS) + 0.5) / LEVELS;
        ctx.globalAlpha = k === STRONG ? 0.55 + 0.45 * t : faint + (1 - faint) * t;
        ctx.strokeStyle = b < LEVELS ? data.colors.positive : data.colors.negative;
        ctx.lineWidth = (k === STRONG ? 0.8 : 0.3) + 4.7 * t;
        ctx.stroke(batches[k][b]);
      }
    }
    ctx.globalAlpha = 1;
    state.visibleEdges = count;
    updateCounts();
    state.drawMs = performance.now() - t0; // for the tests' report
  }

  // ---- thresholds -------------------------------------------------------------------------
  // slider 0: everything; 1..SLIDER: log-spaced from the smallest to the largest magnitude
  function scale(values) {
    let lo = Infinity, hi = 0;
    for (const v of values) {
      if (v > 0) {
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
    }
    if (hi === 0) lo = hi = 1;
    return {
      at: (s) => (s <= 0 ? 0 : lo * Math.pow(hi / lo, s / SLIDER)),
      step: (v) => (v <= lo || hi === lo ? 0
        : Math.round((SLIDER * Math.log(v / lo)) / Math.log(hi / lo))),
    };
  }
  const nodeScale = scale(nodes.filter((n) => n.role !== "metric").map((n) => Math.abs(n.effect)));
  const edgeScale = scale(edges.map((e) => Math.abs(e[2])));
  const nodeSlider = $("node-threshold");
  const edgeSlider = $("edge-threshold");

  function setNodeThreshold() {
    state.nodeMin = nodeScale.at(+nodeSlider.value);
    $("node-threshold-value").textContent = fmt(state.nodeMin);
    nodes.forEach((n, i) => {
      const on = n.role === "metric" || Math.abs(n.effect) >= state.nodeMin ? 1 : 0;
      if (on !== shown[i]) {
        shown[i] = on;
        elements[i].classList.toggle("hidden", !on);
      }
    });
    refresh();
  }

  function setEdgeThreshold() {
    state.edgeMin = edgeScale.at(+edgeSlider.value);
    $("edge-threshold-value").textContent = fmt(state.edgeMin);
    let lo = 0, hi = E; // first edge below the threshold
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (Math.abs(edges[mid][2]) >= state.edgeMin) lo = mid + 1;
      else hi = mid;
    }
    state.edgeCut = lo;
    refresh();
  }

  function refresh() {
    if (state.selected >= 0) path = paths(state.selected);
    mark();
    if (state.selected >= 0) showPanel(state.selected);
    schedule();
  }

  function updateCounts() {
    let n = 0;
    nodes.forEach((node, i) => { if (shown[i] && node.role !== "metric") n++; });
    const c = $("counts");
    c.dataset.nodes = n;
    c.dataset.edges = state.visibleEdges;
    c.textContent = `showing ${n} of ${nodes.filter((x) => x.role !== "metric").length} nodes, ` +
                    `${state.visibleEdges} of ${E} edges`;
  }

  nodeSlider.addEventListener("input", setNodeThreshold);
  edgeSlider.addEventListener("input", setEdgeThreshold);
  if (!E) edgeSlider.disabled = true;
  if (E > DEFAULT_EDGES) edgeSlider.value = edgeScale.step(Math.abs(edges[DEFAULT_EDGES - 1][2]));

  // ---- paths through a node ---------------------------------------------------------------
  function paths(i) {
    const up = new Uint8Array(N), down = new Uint8Array(N);
    const walk = (start, lists, end, seen) => {
      const stack = [start];
      while (stack.length) {
        const k = stack.pop();
        for (const j of lists[k]) {
          if (!visible(j)) continue;
          const other = edges[j][end];
          if (!seen[other]) {
            seen[other] = 1;
            stack.push(other);
          }
        }
      }
    };
    walk(i, incoming, 0, up);
    walk(i, outgoing, 1, down);
    const on = new Uint8Array(N), through = new Uint8Array(E);
    on[i] = 1;
    for (let k = 0; k < N; k++) if (up[k] || down[k]) on[k] = 1;
    for (let j = 0; j < state.edgeCut; j++) {
      if (!visible(j)) continue;
      const [s, t] = edges[j];
      if ((up[s] && (up[t] || t === i)) || ((down[s] || s === i) && down[t])) through[j] = 1;
    }
    return { nodes: on, edges: through };
  }

  function mark() {
    elements.forEach((g, i) => {
      g.classList.toggle("selected", i === state.selected);
      g.classList.toggle("dim", path !== null && !path.nodes[i]);
    });
  }

  function select(i) {
    const t0 = performance.now();
    state.selected = i;
    path = i >= 0 ? paths(i) : null;
    mark();
    if (i >= 0) showPanel(i);
    else clearPanel();
    const url = i >= 0 ? `#node=${encodeURIComponent(nodes[i].id)}`
      : location.pathname + location.search;
    try {
      history.replaceState(null, "", url); // the address selects this node when reopened
    } catch (err) { /* some browsers refuse it for file: pages; the hash is a convenience */ }
    schedule();
    state.selectMs = performance.now() - t0; // paths and panel; the drawing follows
  }

  // ---- the panel ----------------------------------------------------------------------------
  const panel = $("panel");
  const hint = panel.innerHTML;

  function clearPanel() {
    panel.innerHTML = hint;
  }

  function h(tag, text, cls, parent) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (cls) e.className = cls;
    if (parent) parent.appendChild(e);
    return e;
  }

  function showPanel(i) {
    const n = nodes[i];
    panel.textContent = "";
    h("h2", n.id, "node-id", panel);
    const table = h("table", null, "facts", panel);
    const row = (k, v) => {
      if (v === undefined || v === null || v === "") return;
      const tr = h("tr", null, null, table);
      h("th", k, null, tr);
      h("td", v, null, tr);
    };
    if (n.role !== "metric") {
      row("score", fmt(n.effect, true));
      row("label", n.label);
      row("site", n.site);
      row("node", n.role === "feature" ? `feature ${n.feature}` : n.role);
      if (n.position !== null) row("position", `${n.position}` +
                                   (n.token !== undefined ? ` (${show(n.token)})` : ""));
      row("dictionary", n.dictionary);
      const f = n.key ? data.features[n.key] : null;
      if (f) {
        row("density", f.density !== undefined ? fmt(f.density) : null);
        row("max activation", f.max_activation !== undefined ? fmt(f.max_activation) : null);
      }
    } else {
      row("node", "the metric (the logit difference the circuit is scored by)");
    }
    if (typeof n.neuronpedia === "string" && /^https?:\/\//.test(n.neuronpedia)) {
      const p = h("p", null, "link", panel);
      const a = h("a", "open on Neuronpedia", null, p);
      a.href = n.neuronpedia;
      a.target = "_blank";
      a.rel = "noopener noreferrer";
    }
    if (n.role === "feature") contextsSection(n);
    edgeSection("strongest incoming edges", incoming[i], 0);
    edgeSection("strongest outgoing edges", outgoing[i], 1);
  }

  function contextsSection(n) {
    const f = n.key ? data.features[n.key] : null;
    const title = data.corpus ? `top contexts (${data.corpus.name})` : "top contexts";
    h("h3", title, null, panel);
    if (!f || !f.contexts || !f.contexts.length) {
      h("p", data.hasFeatures ? "none recorded for this feature in features.json"
        : "this run has no features.json (no contexts recorded)", "none", panel);
      return;
    }
    const list = h("ol", null, "contexts", panel);
    f.contexts.forEach((c) => {
      const li = h("li", null, "context", list);
      h("span", fmt(c.activation), "activation", li);
      const text = h("span", null, "tokens", li);
      c.tokens.forEach((t, k) => h(k === c.mark ? "mark" : "span", show(t, true), null, text));
    });
  }

  function edgeSection(title, list, end) {
    h("h3", `${title} (${list.length})`, null, panel);
    if (!list.length) {
      h("p", "none", "none", panel);
      return;
    }
    const ul = h("ul", null, "edges", panel);
    list.slice(0, 10).forEach((j) => {
      const e = edges[j], other = e[end];
      const li = h("li", null, visible(j) ? "" : "below-threshold", ul);
      const a = h("a", nodes[other].id, "goto", li);
      a.href = "#";
      a.addEventListener("click", (ev) => {
        ev.preventDefault();
        select(other);
        reveal(other);
      });
      h("span", fmt(e[2], true), e[2] > 0 ? "weight positive" : "weight negative", li);
      if (nodes[other].label) h("span", nodes[other].label, "edge-label", li);
    });
    if (list.length > 10) h("p", `and ${list.length - 10} more`, "none", panel);
  }

  // ---- pointer ------------------------------------------------------------------------------
  const tooltip = $("tooltip");
  const nodeOf = (ev) => {
    const g = ev.target.closest ? ev.target.closest(".node") : null;
    return g ? +g.dataset.index : -1;
  };
  svg.addEventListener("mouseover", (ev) => {
    const i = nodeOf(ev);
    if (i === state.hovered) return;
    state.hovered = i;
    if (i >= 0) {
      const n = nodes[i];
      tooltip.textContent = n.role === "metric" ? "metric" :
        `${n.id}  ${fmt(n.effect, true)}${n.label ? "  " + n.label : ""}`;
      tooltip.hidden = false;
      if (state.selected < 0) showPanel(i);
    } else {
      tooltip.hidden = true;
      if (state.selected < 0) clearPanel();
    }
    if (!path) schedule();
  });
  svg.addEventListener("mousemove", (ev) => {
    tooltip.style.left = `${ev.clientX + 14}px`;
    tooltip.style.top = `${ev.clientY + 14}px`;
  });
  box.addEventListener("mouseleave", () => {
    state.hovered = -1;
    tooltip.hidden = true;
    if (state.selected < 0) clearPanel();
    if (!path) schedule();
  });
  svg.addEventListener("click", (ev) => {
    const i = nodeOf(ev);
    select(i === state.selected ? -1 : i);
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") select(-1);
  });

  // ---- search ---------------------------------------------------------------------------------
  const search = $("search");
  let found = [];
  function matches(n, q) {
    if (n.role === "metric") return q === "metric";
    if (/^\d+$/.test(q)) return n.feature === +q;
    const id = n.id.toLowerCase();
    if (q.includes("/")) return id === q || id.split("@")[0] === q;
    return n.site === q || (typeof n.label === "string" && n.label.toLowerCase().includes(q));
  }
  function find() {
    const q = search.value.trim().toLowerCase();
    found = q ? nodes.map((n, i) => (matches(n, q) ? i : -1)).filter((i) => i >= 0) : [];
    const on = new Set(found);
    elements.forEach((g, i) => g.classList.toggle("match", on.has(i)));
    const hidden = found.filter((i) => !shown[i]).length;
    $("search-count").textContent = !q ? "" : !found.length ? "no match" :
      `${found.length} match${found.length > 1 ? "es" : ""}` +
      (hidden ? ` (${hidden} below the node threshold)` : "") + " · Enter: select";
    $("search-count").dataset.matches = found.length;
  }
  search.addEventListener("input", find);
  search.addEventListener("keydown", (ev) => {
    if (ev.key !== "Enter" || !found.length) return;
    const k = found.indexOf(state.selected);
    const next = found[(k + 1) % found.length];
    select(next);
    reveal(next);
  });

  // ---- zoom -----------------------------------------------------------------------------------
  const wrap = $("graph-wrap");
  function reveal(i) {
    const n = nodes[i];
    wrap.scrollTo({ left: n.x * state.zoom - wrap.clientWidth / 2,
                    top: n.y * state.zoom - wrap.clientHeight / 2 });
  }
  function zoomTo(z) {
    state.zoom = Math.max(0.1, Math.min(4, z));
    resize();
  }
  // the whole circuit in the window, unless that makes it too small to read: then the width
  const fit = () => zoomTo(Math.min(1.5, (wrap.clientWidth - 8) / data.width,
                                    Math.max(0.65, (wrap.clientHeight - 8) / data.height)));
  $("zoom-in").addEventListener("click", () => zoomTo(state.zoom * 1.25));
  $("zoom-out").addEventListener("click", () => zoomTo(state.zoom / 1.25));
  $("zoom-fit").addEventListener("click", fit);

  // ---- text -----------------------------------------------------------------------------------
  function fmt(v, signed) {
    if (v === null || v === undefined) return "";
    const s = Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2)
      : v.toPrecision(3);
    return signed && v > 0 ? `+${s}` : s;
  }
  function show(token, keepSpaces) {
    const t = token.replace(/\n/g, "⏎");
    return keepSpaces ? t : t.replace(/ /g, "·") || "∅";
  }

  // ---- start ----------------------------------------------------------------------------------
  setNodeThreshold();
  setEdgeThreshold();
  fit();
  function selectFromAddress() { // "#node=resid_2/31" selects that node
    const wanted = location.hash.startsWith("#node=")
      ? byId.get(decodeURIComponent(location.hash.slice(6))) : undefined;
    if (wanted !== undefined && wanted !== state.selected) {
      select(wanted);
      reveal(wanted);
    }
  }
  selectFromAddress();
  window.addEventListener("hashchange", selectFromAddress);
  window.circuitView = { nodes: N, edges: E, initMs: performance.now() - started, select,
                         byId, state };
  requestAnimationFrame(() => { window.circuitView.ready = true; });
})();
