/* Trainer page: everything refreshes from /admin/training/status.json every 3 s, without a reload.
 *
 * The "right now" lines (phase, step, ETA of the phase and of the whole round), the warnings, the shown
 * round's metric charts (small SVG line charts built here), the phase durations, the KL-per-round chart
 * and the history table. Text is set with textContent only (never innerHTML), so nothing from the server
 * is interpreted as markup; no inline script (CSP). Polling pauses while the tab is hidden. The charts are
 * redrawn only when their data changed, so a finished round keeps the server-rendered ones.
 */
(function () {
  "use strict";
  var box = document.getElementById("trainer-now");
  if (!box) return;
  var url = box.dataset.statusUrl;
  var PERIOD_MS = 3000;
  var SVG = "http://www.w3.org/2000/svg";
  var COLORS = ["#2f5fd0", "#d0632f", "#2f9e5a", "#9b3fc4", "#b8900f", "#c43f6a"];
  var timer = null, inflight = false, klSignature = null;

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    var s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function plural(count, noun) { return count + " " + noun + (count === 1 ? "" : "s"); }

  function num(v) {
    if (v === null || v === undefined) return "–";
    var a = Math.abs(v);
    if (a !== 0 && (a < 0.001 || a >= 100000)) return v.toExponential(2);
    return String(Number(v.toPrecision(4)));
  }

  /* num() of each tick, with more significant digits where two ticks would read alike (a KL coefficient
   * between 0.05 and 0.0503 reads 0.05, 0.0502, 0.0503, not 0.05 three times). */
  function tickLabels(values) {
    var labels = values.map(num);
    for (var digits = 5; digits <= 15 && new Set(labels).size < labels.length; digits++) {
      labels = values.map(function (v) { return String(Number(v.toPrecision(digits))); });
    }
    return labels;
  }

  function utc(iso) {  /* "YYYY-MM-DD HH:MM:SS" in UTC, as the server renders it */
    if (!iso) return "";
    var d = new Date(iso.endsWith("Z") || /[+-]\d\d:\d\d$/.test(iso) ? iso : iso + "Z");
    return d.toISOString().slice(0, 19).replace("T", " ");
  }

  function stamp(iso) { return utc(iso).slice(0, 16); }

  /* A small line chart: points [[x, y], ...] (y may be null: a gap), axes with min/max labels. */
  function lineChart(points, o) {
    var w = o.width || 440, h = o.height || 190, left = 58, right = 14, top = 30, bottom = 40;
    var pw = w - left - right, ph = h - top - bottom;
    var root = svg("svg", { "class": "chart line", viewBox: "0 0 " + w + " " + h, role: "img",
                            preserveAspectRatio: "xMidYMid meet", "font-family": "system-ui, sans-serif" });
    root.appendChild(svg("title", {}, o.title));
    var good = points.filter(function (p) { return p[1] !== null && isFinite(p[1]); });
    if (!good.length) {
      root.appendChild(svg("text", { x: w / 2, y: h / 2, "text-anchor": "middle", "font-size": 13, fill: "#777" }, o.empty || "no data yet"));
      return root;
    }
    var xs = good.map(function (p) { return p[0]; }), ys = good.map(function (p) { return p[1]; });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs), y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { var pad = Math.abs(y0) * 0.1 || 1; y0 -= pad; y1 += pad; }
    function X(v) { return (left + (v - x0) / (x1 - x0) * pw).toFixed(1); }
    function Y(v) { return (top + ph - (v - y0) / (y1 - y0) * ph).toFixed(1); }
    root.appendChild(svg("text", { x: left, y: 18, "font-size": 12, fill: "#222" }, o.title));
    var yTicks = [y0, (y0 + y1) / 2, y1], yLabels = tickLabels(yTicks);
    yTicks.forEach(function (t, i) {
      root.appendChild(svg("line", { x1: left, x2: left + pw, y1: Y(t), y2: Y(t), stroke: "#e3e3e3" }));
      root.appendChild(svg("text", { x: left - 6, y: Number(Y(t)) + 4, "text-anchor": "end", "font-size": 11, fill: "#555", "class": "y-tick" }, yLabels[i]));
    });
    root.appendChild(svg("line", { x1: left, x2: left, y1: top, y2: top + ph, stroke: "#222" }));
    root.appendChild(svg("line", { x1: left, x2: left + pw, y1: top + ph, y2: top + ph, stroke: "#222" }));
    var xLabels = tickLabels([x0, x1]);
    [x0, x1].forEach(function (t, i) {
      root.appendChild(svg("text", { x: X(t), y: top + ph + 15, "text-anchor": i ? "end" : "start", "font-size": 11, fill: "#555" }, xLabels[i]));
    });
    root.appendChild(svg("text", { x: left + pw / 2, y: h - 6, "text-anchor": "middle", "font-size": 12, fill: "#222" }, o.xLabel));
    var segments = [], current = [];
    points.forEach(function (p) {
      if (p[1] === null || !isFinite(p[1])) { if (current.length) segments.push(current); current = []; }
      else current.push(X(p[0]) + "," + Y(p[1]));
    });
    if (current.length) segments.push(current);
    var color = o.color || COLORS[0];
    var g = svg("g", { "class": "series" });
    g.appendChild(svg("title", {}, o.title));
    segments.forEach(function (seg) {
      g.appendChild(svg("polyline", { points: seg.join(" "), fill: "none", stroke: color, "stroke-width": 2, "stroke-linejoin": "round" }));
    });
    if (good.length <= 60) good.forEach(function (p) { g.appendChild(svg("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: color })); });
    root.appendChild(g);
    return root;
  }

  function describeRound(c, trainerAlive, newest) {
    if (!c) {
      var idle = ["No round is queued or running."];
      if (newest && newest.status === "done" && newest.warning) {
        idle.push(" ", el("span", { "class": "warning", id: "newest-round-warning" },
                          [el("strong", { text: "Round " + newest.number + ":" }), " " + newest.warning]));
      }
      return idle;
    }
    var parts = ["Round " + c.number + ": ", el("strong", { text: c.status })];
    if (c.status === "running" && !trainerAlive) { // killed mid-round: the heartbeat went stale
      parts.push(" · ", el("strong", { "class": "interrupted", text: "interrupted" }),
        ": no trainer is alive; the next one to start resumes this round");
    }
    if (c.phase) {
      parts.push(" · phase ", el("strong", { text: c.phase }));
      if (c.total_steps) parts.push(" · step " + c.step + " of " + c.total_steps);
      if (c.eta_seconds !== null) parts.push(" · about " + duration(c.eta_seconds) + " left in this phase");
    }
    parts.push(" · started by " + c.trigger_label);
    return parts;
  }

  function renderNow(s) {
    var c = s.current;
    $("trainer-alive").replaceChildren.apply($("trainer-alive"), s.trainer_alive
      ? ["Trainer ", el("strong", { text: s.trainer_holder || "" }), " is running (last heartbeat " + utc(s.heartbeat_at).slice(11) + " UTC)."]
      : [el("strong", { text: "No trainer is running." }), " Start one with ", el("code", { text: "storyloop trainer" }), " (the demo starts it for you)."]);
    $("trainer-round").replaceChildren.apply($("trainer-round"), describeRound(c, s.trainer_alive, s.history[0]));
    renderFailed(s.failed);
    renderNewJudgements(s.new_judgements);
    var eta = $("trainer-round-eta");
    if (c && c.round_eta_seconds !== null) {
      eta.replaceChildren("Whole round: about ", el("strong", { text: duration(c.round_eta_seconds) }), " left ",
        el("span", { "class": "muted small", text: "(this phase from its progress, later phases as long as in the previous finished round)" }));
    } else if (c && c.status === "running") {
      eta.replaceChildren(el("span", { "class": "muted small", text: "Whole round: no estimate yet (a phase still to come has not been timed in a finished round)." }));
    } else {
      eta.replaceChildren();
    }
    var progress = $("trainer-progress");
    if (c && c.total_steps) progress.replaceChildren(el("progress", { max: String(c.total_steps), value: String(c.step), "aria-label": "phase progress" }));
    else progress.replaceChildren();
    var reason = c ? "Round " + c.number + " is already " + c.status + ": the trainer runs one round at a time." : "";
    ["start-round", "start-bakeoff"].forEach(function (id) {
      var button = $(id);
      if (button) button.disabled = !!c;
      if ($(id + "-reason")) $(id + "-reason").textContent = reason;
    });
  }

  function renderFailed(f) {  /* the newest round failed: what went wrong and what to do, at the top */
    var box = $("trainer-failed");
    if (!box) return;
    box.hidden = !f;
    if (!f) { box.replaceChildren(); return; }
    var head = [el("strong", { text: "Round " + f.number + " failed" })];
    if (f.phase) head.push(" in phase " + f.phase);
    if (f.finished_at) head.push(" at " + stamp(f.finished_at) + " UTC");
    head.push(": ", el("span", { "class": "error", text: f.error }));
    box.replaceChildren(el("p", {}, head), el("p", { text: "What to do: " + f.advice }));
  }

  function renderNewJudgements(n) {
    var line = $("new-judgements");
    if (!line) return;
    line.classList.toggle("warning", !!(n && n.warning));
    if (!n) line.replaceChildren();
    else if (n.warning) line.replaceChildren(el("strong", { text: "Warning:" }), " " + n.warning);
    else line.replaceChildren(plural(n.count, "new judgement") + " since the last finished round (a round is warned about below " + n.threshold + ").");
  }

  function renderWarnings(warnings) {
    var list = document.querySelector("#version-warnings ul");
    if (!list) return;
    var items = warnings.map(function (w) {
      return el("li", { "class": "warning warning-" + w.code, "data-version": String(w.version_id) },
                [el("strong", { text: w.version_name }), ": " + w.message]);
    });
    if (!items.length) items = [el("li", { "class": "muted none", text: "No warnings: no version drifted far from its parent, copies the previous version or never ends its stories." })];
    list.replaceChildren.apply(list, items);
  }

  function renderMetrics(rm) {
    var card = $("round-metrics");
    var round = rm ? String(rm.round_id) : "", rows = rm ? String(rm.rows) : "0";
    if (card.dataset.round === round && card.dataset.rows === rows) return;  // unchanged: keep what is drawn
    card.dataset.round = round;
    card.dataset.rows = rows;
    $("round-metrics-title").textContent = rm ? "Round " + rm.round_number + ": logged metrics" : "Logged metrics";
    var values = [], charts = [], group = null;
    (rm ? rm.series : []).forEach(function (s, i) {
      var label = s.label || s.metric, part = s.group || s.phase;
      if (s.points.length < 2) {
        values.push(el("li", {}, [el("span", { "class": "muted", text: part + " · " + label }), " ",
                                  el("strong", { text: s.points.length ? num(s.points[s.points.length - 1][1]) : "–" })]));
      } else {
        if (part !== group) { group = part; charts.push(el("h3", { "class": "chart-group", text: part })); }
        var wrap = el("div", { "class": "chart-wrap" });
        wrap.appendChild(lineChart(s.points, { title: part + ": " + label, xLabel: "step", color: COLORS[i % COLORS.length] }));
        charts.push(wrap);
      }
    });
    $("round-values").replaceChildren.apply($("round-values"), values);
    $("round-charts").replaceChildren.apply($("round-charts"), charts);
    $("round-metrics-empty").hidden = !!(rm && rm.series.length);
  }

  function renderTimings(s) {
    var shown = s.current && s.current.status === "running" ? s.current
      : s.history.filter(function (r) { return r.status !== "requested"; })[0];
    var now = shown ? shown.phase_seconds : {}, before = s.previous_phase_seconds || {};
    var order = ["base policy", "sft", "base generate", "reward model", "ppo", "generate", "queue", "metrics"];
    Object.keys(now).concat(Object.keys(before)).forEach(function (p) { if (order.indexOf(p) < 0) order.push(p); });
    var rows = order.filter(function (p) { return p in now || p in before; }).map(function (p) {
      return el("tr", {}, [el("td", { text: p }), el("td", { "class": "num", text: duration(now[p]) }),
                           el("td", { "class": "num", text: duration(before[p]) })]);
    });
    var body = document.querySelector("#phase-times tbody");
    body.replaceChildren.apply(body, rows);
  }

  function renderKl(points) {
    var signature = JSON.stringify(points);
    if (klSignature === null) { klSignature = signature; return; }  // first poll: the server drew the same data
    if (signature === klSignature) return;
    klSignature = signature;
    $("kl-chart").replaceChildren(lineChart(points.map(function (k) { return [k.round_number, k.kl_to_reference]; }), {
      title: "KL of each round's policy to the base reference (nats per story)", xLabel: "training round",
      height: 220, width: 900, empty: "no round has a KL to the reference yet" }));
  }

  function renderHistory(history) {
    var rows = history.map(function (r) {
      var status = [r.status];
      if (r.status === "running" && r.phase) status.push(" ", el("span", { "class": "muted small", text: "(" + r.phase + ")" }));
      return el("tr", { "data-round": String(r.id) }, [
        el("td", { text: String(r.number) }), el("td", {}, status), el("td", { text: r.trigger, title: r.trigger_label }),
        el("td", { text: (r.algorithm || "") + (r.bakeoff ? " (" + r.bakeoff.algorithms.join(", ") +
          (r.bakeoff.campaign_id ? "; campaign " + r.bakeoff.campaign_id : "") + ")" : "") }),
        el("td", { "class": "num", text: String(r.judgements_used) }),
        el("td", {}, [r.reward_version_id ? el("a", { href: "/admin/models#reward-" + r.reward_version_id,
                                                      text: r.reward_version_name || "#" + r.reward_version_id }) : null]),
        el("td", {}, [r.policy_version_id ? el("a", { href: "/admin/models#version-" + r.policy_version_id,
                                                      text: r.policy_version_name || "#" + r.policy_version_id }) : null]),
        el("td", {}, [r.batch_id ? el("a", { href: "/admin/batches#batch-" + r.batch_id,
                                             text: "#" + r.batch_id + " " + (r.batch_name || "") }) : null]),
        el("td", { text: stamp(r.started_at) }), el("td", { text: stamp(r.finished_at) }),
        el("td", { "class": "num", text: r.duration_seconds === null ? "" : duration(r.duration_seconds) }),
        el("td", { "class": "small" }, [r.error ? r.error.split("\n")[0] : "",
          r.warning && r.status === "done" ? el("span", { "class": "warning", text: "Warning: " + r.warning }) : null]),
      ]);
    });
    if (!rows.length) rows = [el("tr", {}, [el("td", { colspan: "12", "class": "muted", text: "No rounds yet." })])];
    var body = document.querySelector("#rounds tbody");
    body.replaceChildren.apply(body, rows);
  }

  function render(s) {
    renderNow(s);
    renderWarnings(s.warnings);
    renderMetrics(s.round_metrics);
    renderTimings(s);
    renderKl(s.kl_per_round);
    renderHistory(s.history);
    $("trainer-updated").textContent = "Updated " + utc(new Date().toISOString()).slice(11) + " UTC · refreshes every 3 s while this tab is visible.";
  }

  function poll() {
    timer = null;
    inflight = true;
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(render)
      .catch(function (err) {
        var note = $("trainer-updated");
        if (note) note.textContent = "Live status unavailable (" + err.message + "); retrying.";
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
