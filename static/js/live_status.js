/* Admin dashboard: live trainer status and annotation throughput, polled from /admin/status.json every 3 s.
 *
 * Fills the element with id "live-status". Text is set with textContent only (never innerHTML), so nothing
 * from the server is interpreted as markup. Polling pauses while the tab is hidden.
 */
(function () {
  "use strict";
  var box = document.getElementById("live-status");
  if (!box) return;
  var url = box.dataset.url || "/admin/status.json";
  var PERIOD_MS = 3000;
  var timer = null;
  var inflight = false;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) node.appendChild(c); });
    return node;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    seconds = Math.max(0, Math.round(seconds));
    if (seconds < 60) return seconds + " s";
    var m = Math.floor(seconds / 60), s = seconds % 60;
    if (m < 60) return m + " min " + s + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  function cell(label, value, id, extra) {
    return el("div", {}, [el("strong", { text: value, id: id }), el("span", { class: "muted", text: label }), extra || null]);
  }

  function render(data) {
    var t = data.trainer, c = t.current, tp = data.throughput, ev = data.evaluation;
    var what, progress = null;
    if (c && c.status === "running") {
      what = "round " + c.round + ": " + (c.phase || "starting");
      if (c.total_steps) {
        what += " — step " + c.step + " of " + c.total_steps;
        progress = el("progress", { max: String(c.total_steps), value: String(c.step), "aria-label": "phase progress" });
      }
    } else if (c) {
      what = "round " + c.round + " " + c.status + " (waiting for the trainer)";
    } else if (t.last) {
      what = "idle · last round " + t.last.round + " " + t.last.status;
    } else {
      what = "idle · no rounds yet";
    }
    var dot = el("span", { class: "dot" + (t.alive ? " on" : ""), "aria-hidden": "true" });
    var grid = el("div", { class: "live-grid" }, [
      el("div", {}, [el("strong", { id: "live-trainer" }, [dot, document.createTextNode(t.alive ? "running" : "not running")]),
                     el("span", { class: "muted", text: "trainer process" })]),
      cell("what it is doing", what, "live-phase", progress),
      cell("estimated time left in this phase", c && c.status === "running" ? duration(c.eta_seconds) : "–", "live-eta"),
      cell("judgements in the last 5 min (" + tp.per_minute + " per minute)", String(tp.last_5_min), "live-throughput"),
      cell("judgements in the last hour", String(tp.last_hour), "live-hour"),
      cell("campaigns waiting for generation", ev.campaigns_waiting + " (" + ev.generation_requests_pending + " stories to write)", "live-campaigns"),
    ]);
    var stamp = el("p", { class: "muted small", text: "Updated " + utcTime(data.generated_at) + " UTC · refreshes every 3 s" });
    box.replaceChildren(el("h2", { text: "Live" }), grid, stamp);
    box.dataset.updated = data.generated_at;
  }

  function utcTime(iso) {  /* "HH:MM:SS" in UTC, 24 h, as every time the server renders (a stamp without a zone is UTC) */
    var d = new Date(iso.endsWith("Z") || /[+-]\d\d:\d\d$/.test(iso) ? iso : iso + "Z");
    return d.toISOString().slice(11, 19);
  }

  function poll() {
    timer = null;
    inflight = true;
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(render)
      .catch(function (err) {
        var note = box.querySelector(".live-error") || box.appendChild(el("p", { class: "muted small live-error" }));
        note.textContent = "Live status unavailable (" + err.message + "); retrying.";
      })
      .finally(function () { inflight = false; schedule(); });
  }

  function schedule() {
    if (timer === null && !document.hidden) timer = setTimeout(poll, PERIOD_MS);
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && timer === null && !inflight) poll();
  });
  poll();
})();
