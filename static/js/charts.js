// Distillery chart pages: live loss curves, sample viewer, comparison, trade-offs.
// Figures come from the server (jobs/charts.py); this file only fetches, draws and reacts.
// Plotly is served from /static/plotly.min.js (copied from the plotly package, no CDN).
(function () {
  "use strict";

  const PLOT_CONFIG = { displaylogo: false, responsive: true };

  // Debiased exponential moving average: TensorBoard's smoothing slider.
  function ema(values, alpha) {
    if (!(alpha > 0)) return values.slice();
    const out = new Array(values.length);
    let acc = 0;
    for (let i = 0; i < values.length; i++) {
      acc = alpha * acc + (1 - alpha) * values[i];
      out[i] = acc / (1 - Math.pow(alpha, i + 1));
    }
    return out;
  }

  async function getJSON(url) {
    const response = await fetch(url, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error(url + " answered " + response.status);
    return response.json();
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    });
    (children || []).forEach((c) => node.appendChild(c));
    return node;
  }

  function fmt(value, digits, unit) {
    if (value === null || value === undefined) return "—";
    return Number(value).toFixed(digits) + (unit || "");
  }

  // ------------------------------------------------------------------ run page: loss curves

  function lossChart(div) {
    const url = div.dataset.seriesUrl;
    const pollMs = Number(div.dataset.pollMs || 2000);
    const state = { series: {}, styles: {}, layout: null, lastStep: null, maxPoints: 2000,
      active: div.dataset.active === "1", alpha: 0, log: false, timer: null };

    // Controls are made here so the run page template needs only the chart div.
    const log = el("input", { type: "checkbox", id: "loss-log" });
    const smooth = el("input", { type: "range", id: "loss-smoothing", min: "0", max: "0.99",
      step: "0.01", value: "0" });
    const smoothOut = el("output", { id: "loss-smoothing-value", text: "0.00" });
    const live = el("span", { class: "muted small", id: "loss-live" });
    const bar = el("div", { class: "chart-controls" }, [
      el("label", {}, [log, document.createTextNode(" log scale (losses)")]),
      el("label", { title: "Exponential moving average of the loss terms, as TensorBoard does" },
        [document.createTextNode("smoothing "), smooth, smoothOut]),
      live,
    ]);
    div.parentNode.insertBefore(bar, div);
    log.addEventListener("change", () => { state.log = log.checked; draw(); });
    smooth.addEventListener("input", () => {
      state.alpha = Number(smooth.value);
      smoothOut.textContent = state.alpha.toFixed(2);
      draw();
    });

    function draw() {
      const names = Object.keys(state.styles).filter((n) => state.series[n]);
      const data = names.map((name) => {
        const style = state.styles[name];
        const s = state.series[name];
        const y = style.meta && style.meta.smooth ? ema(s.y, state.alpha) : s.y;
        return Object.assign({}, style, { x: s.x, y: y });
      });
      const layout = JSON.parse(JSON.stringify(state.layout || {}));
      layout.yaxis = Object.assign(layout.yaxis || {}, { type: state.log ? "log" : "linear" });
      layout.uirevision = "keep"; // new points must not undo the user's zoom
      if (!data.length) {
        layout.annotations = [{ text: state.active ? "Waiting for the first logged steps…"
          : "This run logged no metrics.", showarrow: false, xref: "paper", yref: "paper",
          x: 0.5, y: 0.75 }];
      }
      Plotly.react(div, data, layout, PLOT_CONFIG);
      live.textContent = state.active
        ? "live · step " + (state.lastStep === null ? "—" : state.lastStep)
        : "finished";
    }

    function tooLong() {
      return Object.values(state.series).some((s) => s.x.length > 2 * state.maxPoints);
    }

    async function full() {
      const body = await getJSON(url);
      state.series = {};
      Object.entries(body.series).forEach(([name, s]) => {
        state.series[name] = { x: s.step, y: s.value };
      });
      state.styles = body.styles;
      state.layout = body.layout;
      state.lastStep = body.last_step;
      state.maxPoints = body.max_points;
      state.active = body.active;
      draw();
    }

    async function increment() {
      const since = state.lastStep === null ? "" : "?since=" + state.lastStep;
      const body = await getJSON(url + since);
      state.active = body.active;
      const names = Object.keys(body.series);
      if (names.some((n) => !state.styles[n])) return full(); // a new series: restyle all
      names.forEach((name) => {
        const s = state.series[name];
        const add = body.series[name];
        const tail = s.x.length ? s.x[s.x.length - 1] : -Infinity;
        add.step.forEach((step, i) => {
          if (step > tail) { s.x.push(step); s.y.push(add.value[i]); }
        });
      });
      if (body.last_step !== null) state.lastStep = body.last_step;
      // Appended raw points add up; once a curve doubles its budget, fetch it downsampled.
      if (tooLong()) return full();
      draw();
    }

    async function tick() {
      try {
        await increment();
      } catch (err) {
        live.textContent = "connection lost, retrying…";
      }
      if (state.active) state.timer = setTimeout(tick, pollMs);
      else draw();
    }

    full()
      .catch((err) => { div.textContent = "Could not load the curves: " + err.message; })
      .then(() => { if (state.active) state.timer = setTimeout(tick, pollMs); });
  }

  // ------------------------------------------------------------------ synchronized zoom/pan

  // One transform shared by every .zoom-frame in `root`: wheel zooms at the cursor, drag pans,
  // double-click resets. Every panel shows the same region of its image.
  function syncZoom(root, onChange) {
    const view = { s: 1, x: 0, y: 0 };
    function apply() {
      root.querySelectorAll(".zoom-layer").forEach((layer) => {
        layer.style.transform = "translate(" + view.x + "px," + view.y + "px) scale(" + view.s + ")";
      });
      root.classList.toggle("zoomed", view.s > 1);
      if (onChange) onChange(view);
    }
    function clamp(frame) {
      const w = frame.clientWidth, h = frame.clientHeight;
      view.x = Math.min(0, Math.max(w - w * view.s, view.x));
      view.y = Math.min(0, Math.max(h - h * view.s, view.y));
    }
    function zoomAt(frame, factor, cx, cy) {
      const s = Math.min(16, Math.max(1, view.s * factor));
      view.x = cx - ((cx - view.x) * s) / view.s;
      view.y = cy - ((cy - view.y) * s) / view.s;
      view.s = s;
      clamp(frame);
      apply();
    }
    root.addEventListener("wheel", (e) => {
      const frame = e.target.closest(".zoom-frame");
      if (!frame) return;
      e.preventDefault();
      const r = frame.getBoundingClientRect();
      zoomAt(frame, e.deltaY < 0 ? 1.25 : 0.8, e.clientX - r.left, e.clientY - r.top);
    }, { passive: false });
    let drag = null;
    root.addEventListener("pointerdown", (e) => {
      const frame = e.target.closest(".zoom-frame");
      if (!frame || view.s === 1 || e.target.closest("input")) return;
      drag = { frame: frame, x: e.clientX - view.x, y: e.clientY - view.y };
      frame.setPointerCapture(e.pointerId);
    });
    root.addEventListener("pointermove", (e) => {
      if (!drag) return;
      view.x = e.clientX - drag.x;
      view.y = e.clientY - drag.y;
      clamp(drag.frame);
      apply();
    });
    root.addEventListener("pointerup", () => { drag = null; });
    root.addEventListener("dblclick", (e) => {
      if (!e.target.closest(".zoom-frame")) return;
      view.s = 1; view.x = 0; view.y = 0; apply();
    });
    return {
      view: view,
      zoom(factor) {
        const frame = root.querySelector(".zoom-frame");
        if (frame) zoomAt(frame, factor, frame.clientWidth / 2, frame.clientHeight / 2);
      },
      reset() { view.s = 1; view.x = 0; view.y = 0; apply(); },
    };
  }

  // ------------------------------------------------------------------ sample viewer

  function sampleViewer(root, listing) {
    const images = listing.images;
    const variants = Object.keys(listing.variants).filter((v) => listing.variants[v].available);
    let pos = 0;
    let variant = variants[0] || "fp32";
    const q = (sel) => root.querySelector(sel);
    const zoom = syncZoom(root);

    const pick = q("#sample-variant");
    variants.forEach((v) => pick.appendChild(el("option", { value: v, text: v })));
    pick.addEventListener("change", () => { variant = pick.value; show(); });

    const swipe = q("#swipe-range");
    function setSwipe() {
      // The student covers the teacher to the right of the handle: inset from the left.
      q("#swipe-student").style.clipPath = "inset(0 0 0 " + swipe.value + "%)";
      q("#swipe-handle").style.left = swipe.value + "%";
    }
    swipe.addEventListener("input", setSwipe);

    function panel(id, src) {
      const img = q("#" + id);
      if (!img) return;
      if (src) { img.src = src; img.closest(".panel").hidden = false; }
      else img.closest(".panel").hidden = true;
    }

    function show() {
      if (!images.length) return;
      const image = images[pos];
      q("#sample-name").textContent = image.name;
      q("#sample-position").textContent = pos + 1 + " of " + images.length;
      panel("img-input", image.input);
      panel("img-teacher", image.teacher);
      ["fp32", "int8", "fp16"].forEach((v) => panel("img-student-" + v, image.students[v]));
      q("#swipe-teacher").src = image.teacher;
      q("#swipe-student").src = image.students[variant] || "";
      q("#img-diff").src = image.diffs[variant] || "";
      q("#swipe-variant").textContent = variant;
      q("#diff-variant").textContent = variant;
      const body = q("#sample-metrics tbody");
      body.innerHTML = "";
      variants.forEach((v) => {
        const m = image.metrics[v] || {};
        body.appendChild(el("tr", { "data-variant": v }, [
          el("td", { text: "student " + v }),
          el("td", { class: "num", text: fmt(m.psnr, 2, " dB") }),
          el("td", { class: "num", text: fmt(m.ssim, 4) }),
        ]));
      });
      q("#sample-prev").disabled = pos === 0;
      q("#sample-next").disabled = pos === images.length - 1;
      setSwipe();
    }

    function go(delta) {
      const next = Math.min(images.length - 1, Math.max(0, pos + delta));
      if (next !== pos) { pos = next; show(); }
    }
    q("#sample-prev").addEventListener("click", () => go(-1));
    q("#sample-next").addEventListener("click", () => go(1));
    q("#zoom-in").addEventListener("click", () => zoom.zoom(1.5));
    q("#zoom-out").addEventListener("click", () => zoom.zoom(1 / 1.5));
    q("#zoom-reset").addEventListener("click", () => zoom.reset());
    document.addEventListener("keydown", (e) => {
      // Arrow keys on the swipe slider move the slider, not the image.
      if (e.target.closest && e.target.closest("input, select, textarea")) return;
      if (e.key === "ArrowLeft") { go(-1); e.preventDefault(); }
      if (e.key === "ArrowRight") { go(1); e.preventDefault(); }
    });
    show();
    return { go: go, zoom: zoom };
  }

  // ------------------------------------------------------------------ comparison page

  function compareChart(div) {
    const select = document.getElementById("compare-metric");
    const note = document.getElementById("compare-points");
    let bound = false;
    async function load() {
      const url = div.dataset.url + "&metric=" + encodeURIComponent(select.value);
      const body = await getJSON(url);
      await Plotly.react(div, body.figure.data, body.figure.layout, PLOT_CONFIG);
      if (note) note.textContent = body.points + " points drawn";
      if (!bound) {
        bound = true;
        div.on("plotly_click", (event) => {
          const meta = event.points[0] && event.points[0].data.meta;
          if (meta && meta.url) window.location.href = meta.url;
        });
      }
    }
    select.addEventListener("change", load);
    load().catch((err) => { div.textContent = "Could not load the curves: " + err.message; });
  }

  function compareSamples(root) {
    const urls = JSON.parse(document.getElementById("compare-samples-data").textContent);
    const pickImage = document.getElementById("compare-image");
    const pickVariant = document.getElementById("compare-variant");
    function show() {
      const entry = urls[pickImage.value];
      if (!entry) return;
      root.querySelector("[data-part=input]").src = entry.input;
      root.querySelector("[data-part=teacher]").src = entry.teacher;
      root.querySelectorAll("[data-run-student]").forEach((img) => {
        const src = entry.students[img.dataset.runStudent];
        img.src = src.replace("/student_fp32.png", "/student_" + pickVariant.value + ".png");
        img.alt = "student " + pickVariant.value;
      });
    }
    pickImage.addEventListener("change", show);
    pickVariant.addEventListener("change", show);
    syncZoom(root);
    show();
  }

  // ------------------------------------------------------------------ trade-offs page

  function tradeoffCharts(data) {
    data.charts.forEach((chart) => {
      const div = document.getElementById("tradeoff-" + chart.key);
      if (!div) return;
      Plotly.react(div, chart.figure.data, chart.figure.layout, PLOT_CONFIG).then(() => {
        div.on("plotly_click", (event) => {
          const url = event.points[0] && event.points[0].customdata;
          if (url) window.location.href = url; // hover names the run; a click opens it
        });
      });
    });
  }

  // ------------------------------------------------------------------ start-up

  function start() {
    const loss = document.getElementById("loss-chart");
    if (loss && loss.dataset.seriesUrl) lossChart(loss);
    const viewer = document.getElementById("sample-viewer");
    if (viewer) {
      const listing = JSON.parse(document.getElementById("samples-data").textContent);
      window.distillerySamples = sampleViewer(viewer, listing);
    }
    const compare = document.getElementById("compare-chart");
    if (compare) compareChart(compare);
    const samples = document.getElementById("compare-samples");
    if (samples) compareSamples(samples);
    const filter = document.getElementById("picker-filter");
    if (filter) {
      filter.addEventListener("input", () => {
        const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
        document.querySelectorAll("#picker-table tbody tr").forEach((row) => {
          const text = row.textContent.toLowerCase();
          row.hidden = !words.every((w) => text.includes(w));
        });
      });
    }
    const tradeoffs = document.getElementById("tradeoffs-data");
    if (tradeoffs) tradeoffCharts(JSON.parse(tradeoffs.textContent));
  }

  window.DistilleryCharts = { ema: ema };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
