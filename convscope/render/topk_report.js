// convscope top-k report: browse layers, then feature maps, then one map's top-k.
// Everything is built with createElement/textContent: names from the data never become HTML.
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("topk-data").textContent);
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const SHOW = 112; // CSS pixels per tile in the map view
  let state = { layer: -1, map: -1 };

  function parseHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    const l = h.has("l") ? parseInt(h.get("l"), 10) : -1;
    const m = h.has("m") ? parseInt(h.get("m"), 10) : -1;
    const layer = l >= 0 && l < D.layers.length ? l : -1;
    const map = layer >= 0 && m >= 0 && m < D.layers[layer].channels ? m : -1;
    return { layer, map };
  }

  function go(layer, map) {
    let h = "";
    if (layer >= 0) h = "l=" + layer + (map >= 0 ? "&m=" + map : "");
    if (location.hash.slice(1) === h) render();
    else location.hash = h;
  }

  function sidebar() {
    const list = $("layers");
    list.replaceChildren();
    D.layers.forEach((L, i) => {
      const b = el("button", "layer-link" + (i === state.layer ? " active" : ""));
      b.dataset.layer = String(i);
      b.append(el("span", "name", L.name), el("span", "count", L.channels + " maps"));
      b.addEventListener("click", () => go(i, -1));
      list.append(b);
    });
  }

  function overview(main) {
    main.append(el("h2", null, "Run"));
    const dl = el("dl", "facts");
    const add = (k, v) => dl.append(el("dt", null, k), el("dd", null, v));
    add("model", D.model);
    add("images", D.images_read + " read of " + D.num_images + " (" + D.skipped.length + " skipped)");
    add("k", String(D.k));
    add("preprocessing", D.preprocess);
    add("layers", D.layers.map((L) => L.name + " (" + L.channels + ")").join(", "));
    main.append(dl);
    main.append(el("p", "hint", "Pick a layer on the left (or press \u2193). Keys: \u2190 \u2192 maps, \u2191 \u2193 layers, Esc back."));
    if (D.filters) {
      main.append(el("h2", null, "Filters of " + D.filters.module + " (dead ones framed red: " + D.filters.dead.length + ")"));
      const img = el("img", "filters");
      img.src = D.filters.path;
      img.alt = "first-layer filters";
      main.append(img);
    }
    if (D.skipped.length) {
      main.append(el("h2", null, "Unreadable images (skipped)"));
      const ul = el("ul", "skipped");
      D.skipped.forEach((s) => ul.append(el("li", null, s.file + ": " + s.reason)));
      main.append(ul);
    }
  }

  function layerView(main, li) {
    const L = D.layers[li];
    main.append(el("h2", null, L.name + " \u2014 " + L.channels + " feature maps"));
    if (L.rf) main.append(el("p", "hint", "receptive field " + L.rf + "; each thumbnail is the map's strongest projection"));
    const g = el("div", "map-grid");
    const cols = D.thumb_cols;
    for (let c = 0; c < L.channels; c++) {
      const t = el("button", "map-thumb");
      t.dataset.map = String(c);
      t.title = L.name + " map " + c + " (top value " + L.vals[c * D.k] + ")";
      const pic = el("span", "thumb-pic");
      pic.style.backgroundImage = "url(" + JSON.stringify(L.thumbs) + ")";
      pic.style.backgroundPosition = -(c % cols) * D.thumb + "px " + -Math.floor(c / cols) * D.thumb + "px";
      t.append(pic, el("span", "thumb-label", String(c)));
      t.addEventListener("click", () => go(li, c));
      g.append(t);
    }
    main.append(g);
  }

  function tile(src, fig, x, y, cls) {
    const s = SHOW / D.tile;
    const w = el("div", "tile " + cls);
    w.style.width = SHOW + "px";
    w.style.height = SHOW + "px";
    const img = el("img");
    img.src = src;
    img.alt = "";
    img.style.width = fig.w * s + "px";
    img.style.height = fig.h * s + "px";
    img.style.left = -x * s + "px";
    img.style.top = -y * s + "px";
    w.append(img);
    return w;
  }

  function mapView(main, li, c) {
    const L = D.layers[li];
    const k = D.k, cols = D.cols, T = D.tile, gap = D.gap_grid;
    const rows = Math.ceil(k / cols);
    const gw = cols * T + (cols - 1) * gap;
    const fig = { w: 2 * gw + D.gap_between, h: rows * T + (rows - 1) * gap };
    const src = L.fig + "/c" + String(c).padStart(4, "0") + ".png";
    const head = el("div", "map-head");
    const prev = el("button", "nav prev", "\u2190 map " + (c - 1));
    prev.disabled = c === 0;
    prev.addEventListener("click", () => go(li, c - 1));
    const next = el("button", "nav next", "map " + (c + 1) + " \u2192");
    next.disabled = c === L.channels - 1;
    next.addEventListener("click", () => go(li, c + 1));
    const up = el("button", "nav up", "all maps of " + L.name);
    up.addEventListener("click", () => go(li, -1));
    head.append(up, prev, el("h2", "map-title", L.name + " \u2014 map " + c), next);
    main.append(head);
    const pair = el("div", "pair");
    const pg = el("div", "tiles projections");
    const xg = el("div", "tiles patches");
    pg.style.gridTemplateColumns = xg.style.gridTemplateColumns = "repeat(" + cols + ", auto)";
    const info = el("ol", "entries");
    for (let j = 0; j < k; j++) {
      const r = Math.floor(j / cols), q = j % cols;
      const x = q * (T + gap), y = r * (T + gap);
      const id = L.imgs[c * k + j];
      pg.append(tile(src, fig, x, y, "proj-tile"));
      const pt = tile(src, fig, gw + D.gap_between + x, y, "patch-tile");
      xg.append(pt);
      const li2 = el("li", "entry");
      if (id < 0) {
        li2.textContent = "(no image)";
      } else {
        const name = D.names[id];
        const label = D.labels[id];
        pt.title = name;
        li2.append(
          el("span", "img-name", name),
          el("span", "img-label", label ? " [" + label + "]" : ""),
          el("span", "value", " value " + L.vals[c * k + j]),
          el("span", "pos", L.ys[c * k + j] >= 0 ? " at (" + L.ys[c * k + j] + ", " + L.xs[c * k + j] + ")" : "")
        );
      }
      info.append(li2);
    }
    const cp = el("figure", "grid-figure");
    cp.append(pg, el("figcaption", null, "projections (DeconvNet)"));
    const cx = el("figure", "grid-figure");
    cx.append(xg, el("figcaption", null, "image patches (receptive field)"));
    pair.append(cp, cx);
    main.append(pair, info);
  }

  function render() {
    state = parseHash();
    sidebar();
    const main = $("main");
    main.replaceChildren();
    if (state.layer < 0) overview(main);
    else if (state.map < 0) layerView(main, state.layer);
    else mapView(main, state.layer, state.map);
    const active = document.querySelector(".layer-link.active");
    if (active && active.scrollIntoView) active.scrollIntoView({ block: "nearest" });
  }

  document.addEventListener("keydown", (e) => {
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    const { layer, map } = state;
    const n = D.layers.length;
    if (e.key === "ArrowDown" || e.key === "j") {
      const l = Math.min(n - 1, layer + 1);
      go(l, map >= 0 ? Math.min(map, D.layers[l].channels - 1) : -1);
    } else if (e.key === "ArrowUp" || e.key === "k") {
      if (layer < 0) return;
      const l = Math.max(0, layer - 1);
      go(l, map >= 0 ? Math.min(map, D.layers[l].channels - 1) : -1);
    } else if ((e.key === "ArrowRight" || e.key === "l") && layer >= 0) {
      go(layer, Math.min(D.layers[layer].channels - 1, map + 1));
    } else if ((e.key === "ArrowLeft" || e.key === "h") && layer >= 0 && map > 0) {
      go(layer, map - 1);
    } else if (e.key === "Escape" || e.key === "Backspace") {
      if (map >= 0) go(layer, -1);
      else if (layer >= 0) go(-1, -1);
    } else return;
    e.preventDefault();
  });
  window.addEventListener("hashchange", render);
  render();
})();
