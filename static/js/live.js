// Live status: every element with data-status-url and data-active="1" polls its JSON every 2 s
// and updates the badge, progress bar, step and ETA inside it. When the job ends the page reloads
// once (data-reload-on-end) so results and artifacts appear.
(function () {
  "use strict";
  const INTERVAL_MS = 2000;

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function setText(root, field, text) {
    root.querySelectorAll('[data-field="' + field + '"]').forEach((el) => (el.textContent = text));
  }

  function apply(root, data) {
    root.querySelectorAll('[data-field="status"]').forEach((el) => {
      el.textContent = data.status;
      el.className = "badge status-" + data.status;
    });
    if (typeof data.progress === "number") {
      root.querySelectorAll("progress").forEach((bar) => (bar.value = data.progress));
      setText(root, "progress", Math.round(100 * data.progress) + "%");
    }
    if ("step" in data) setText(root, "step", data.step);
    if ("total" in data) setText(root, "total", data.total);
    if ("phase" in data) setText(root, "phase", data.active && data.phase ? "· " + data.phase : "");
    if ("eta_seconds" in data) setText(root, "eta", data.active ? duration(data.eta_seconds) : "—");
    root.querySelectorAll('[data-field="error"]').forEach((el) => {
      if (data.error) {
        (el.querySelector("pre") || el).textContent = data.error;
        el.hidden = false;
      }
    });
    if (!data.active) {
      root.dataset.active = "0";
      if (root.dataset.reloadOnEnd) window.location.reload();
    }
  }

  async function poll(root) {
    try {
      const response = await fetch(root.dataset.statusUrl, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      if (response.ok) apply(root, await response.json());
    } catch (err) {
      // A dropped connection (server restarting) is retried on the next tick.
    }
  }

  function tick() {
    const active = document.querySelectorAll('[data-status-url][data-active="1"]');
    if (!active.length) return;
    Promise.all([...active].map(poll)).finally(() => setTimeout(tick, INTERVAL_MS));
  }

  document.addEventListener("DOMContentLoaded", () => setTimeout(tick, INTERVAL_MS));
})();
