/* storyloop task pages: keyboard shortcuts, a check before submitting, the time taken, and
 * submitting without losing the answer when the server is briefly unavailable.
 *
 * Everything works without this script (plain radio buttons and forms); it only adds:
 *   BWS:    1-4 mark best, Shift+1-4 mark worst, Enter submits, S skips.
 *   Rating: 1-5 score the highlighted scale and move to the next one, Enter submits, S skips. After
 *           the last scale the focus stays on it: Tab goes on to the comment, where Enter submits too.
 *   Skip:   asks first when something is already marked, scored or typed, which a skip would lose.
 *   Both:   the form is sent with fetch; on a 503 or a network error the page stays as it is (the
 *           marked choices, the comment) and sends the same form again, with the same idempotency
 *           key, after the server's Retry-After, or at once with "Try again". The server stores a
 *           submission once per key, so a retry after an answer that got lost is never a double.
 * Number keys are matched by physical key (KeyboardEvent.code "Digit1".."Digit5", or the number
 * pad), so they work on every layout, AZERTY included, whatever character the key produces.
 */
(function () {
  "use strict";
  var form = document.getElementById("task-form");
  if (!form) return;
  var kind = form.dataset.kind;
  var submitBtn = document.getElementById("submit-btn");
  var msg = document.getElementById("form-msg");
  var skipForm = document.getElementById("skip-form");
  var durationInput = form.querySelector("[data-duration]");
  var retryBtn = document.getElementById("retry-btn");
  var shortcuts = document.getElementById("shortcuts");
  var started = performance.now();
  var sending = false;
  var tried = false;
  var retryTimer = null; // set while a retry is waiting
  var DEFAULT_RETRY_S = 3;

  form.noValidate = true; // this script checks and explains; without it the browser's `required` does

  function digitOf(e) {
    var m = /^(?:Digit|Numpad)([0-9])$/.exec(e.code || "");
    if (m) return +m[1];
    if (/^[0-9]$/.test(e.key || "")) return +e.key; // virtual keyboards without a code
    return null;
  }

  function isTyping(el) {
    if (!el || !el.tagName) return false;
    if (el.isContentEditable || el.tagName === "TEXTAREA" || el.tagName === "SELECT") return true;
    return el.tagName === "INPUT" && ["radio", "checkbox", "button", "submit", "reset"].indexOf(el.type) < 0;
  }

  // Key hints in messages only where the page shows its own (storyloop.css hides them on touch screens).
  function keys(hint) {
    return shortcuts && getComputedStyle(shortcuts).display !== "none" ? " (" + hint + ")" : "";
  }

  function show(text, bad) {
    msg.textContent = text;
    msg.hidden = !text;
    msg.classList.toggle("bad", !!bad);
    msg.classList.toggle("hint", !bad);
  }

  // ------------------------------------------------------------ BWS

  var cards = Array.prototype.slice.call(form.querySelectorAll(".cont"));

  function radio(name, n) {
    return cards[n - 1] && cards[n - 1].querySelector('input[name="' + name + '"]');
  }

  function checkedValue(name) {
    var r = form.querySelector('input[name="' + name + '"]:checked');
    return r ? r.value : null;
  }

  function bwsProblem() {
    var best = checkedValue("best"), worst = checkedValue("worst");
    cards.forEach(function (card) {
      card.classList.toggle("is-best", card.querySelector('input[name="best"]').checked);
      card.classList.toggle("is-worst", card.querySelector('input[name="worst"]').checked);
    });
    if (best && worst && best === worst) return { text: "Best and worst must differ: pick two different continuations.", bad: true };
    if (!best && !worst) return { text: "Mark one continuation as best" + keys("1–4") + " and one as worst" + keys("Shift+1–4") + "." };
    if (!best) return { text: "Now mark the best continuation" + keys("1–4") + "." };
    if (!worst) return { text: "Now mark the worst continuation" + keys("Shift+1–4") + "." };
    return null;
  }

  // ------------------------------------------------------------ rating

  var dims = Array.prototype.slice.call(form.querySelectorAll("fieldset.dim"));
  var current = 0;

  function setCurrent(i) {
    current = Math.max(0, Math.min(dims.length - 1, i));
    dims.forEach(function (d, j) { d.classList.toggle("current", j === current); });
  }

  function focusDim(i) {
    var d = dims[i];
    var target = d.querySelector("input:checked") || d.querySelector("input");
    target.focus();
  }

  function ratingProblem() {
    var missing = dims.filter(function (d) { return !d.querySelector("input:checked"); })
      .map(function (d) { return d.dataset.label; });
    if (missing.length) return { text: "Still to score: " + missing.join(", ") + "." };
    return null;
  }

  dims.forEach(function (d, i) {
    d.addEventListener("focusin", function () { setCurrent(i); });
  });

  // ------------------------------------------------------------ both

  function problem() { return kind === "bws" ? bwsProblem() : ratingProblem(); }

  function update() {
    var p = problem();
    submitBtn.disabled = !!p || sending;
    if (retryTimer) return p; // the countdown keeps the message line
    if (p) show(p.text, p.bad || tried);
    else show("", false);
    return p;
  }

  form.addEventListener("change", update);

  form.addEventListener("submit", function (e) {
    var p = update();
    if (sending || p) {
      e.preventDefault();
      if (p) { tried = true; show(p.text, true); }
      return;
    }
    if (durationInput) durationInput.value = String(Math.round(performance.now() - started));
    sending = true; // a second Enter or click does nothing; the server would not count it twice anyway
    if (!window.fetch || !window.FormData) { // an old browser: the plain form post
      setTimeout(function () { submitBtn.disabled = true; }, 0);
      return;
    }
    e.preventDefault();
    submitBtn.disabled = true;
    send();
  });

  // ------------------------------------------------------------ sending, and retrying

  function stopRetrying() {
    clearInterval(retryTimer);
    retryTimer = null;
    if (retryBtn) retryBtn.hidden = true;
  }

  function retryLater(seconds, why) {
    stopRetrying();
    var left = Math.max(1, Math.round(seconds));
    function tick() {
      if (left <= 0) { send(); return; }
      show(why + " Your answer is kept; retrying in " + left + " s…", true);
      left -= 1;
    }
    retryTimer = setInterval(tick, 1000);
    tick();
    if (retryBtn) retryBtn.hidden = false;
  }

  function send() {
    stopRetrying();
    if (problem()) { sending = false; update(); return; } // changed meanwhile into something unsendable
    show("Sending…", false);
    fetch(form.action, {
      method: "POST", body: new FormData(form), credentials: "same-origin",
      headers: { "Accept": "text/html", "X-Storyloop-Submit": "fetch" } // the server answers where to go next
    }).then(function (r) {
      if (r.status === 503) {
        var after = parseInt(r.headers.get("Retry-After"), 10);
        retryLater(after > 0 ? after : DEFAULT_RETRY_S, "The server is busy.");
        return;
      }
      if (r.ok && (r.headers.get("Content-Type") || "").indexOf("application/json") === 0) {
        return r.json().then(function (answer) { window.location.assign(answer.location); });
      }
      // Anything else (the form refused, the session ended): send the same form the plain way, so
      // that the browser shows the server's own page. The same key: never stored twice.
      HTMLFormElement.prototype.submit.call(form);
    }).catch(function () {
      retryLater(DEFAULT_RETRY_S, "No answer from the server.");
    });
  }

  if (retryBtn) retryBtn.addEventListener("click", function () { if (sending) send(); });

  window.addEventListener("pageshow", function (e) {
    if (e.persisted) { stopRetrying(); sending = false; update(); } // back/forward cache: the form is live again
  });

  function answered() { // what a skip would throw away
    var comment = form.querySelector("#comment");
    return !!form.querySelector("input:checked") || !!(comment && comment.value.trim());
  }

  var SKIP_QUESTION = kind === "bws" ? "Skip this task? The best and worst you marked will be lost."
    : "Skip this task? The scores and comment you entered will be lost.";

  if (skipForm) {
    // The S key, the Skip button and Enter in the reason box all end here.
    skipForm.addEventListener("submit", function (e) {
      if (sending || (answered() && !window.confirm(SKIP_QUESTION))) { e.preventDefault(); return; }
      sending = true;
    });
  }

  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && t && t.form === form) {
      e.preventDefault();
      form.requestSubmit();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey || e.isComposing || e.repeat) return;
    if (isTyping(t)) return; // typing a comment or a skip reason
    if (e.key === "Enter") {
      if (t && (t.tagName === "BUTTON" || t.tagName === "A" || t.tagName === "SUMMARY")) return; // their own action
      e.preventDefault();
      form.requestSubmit();
      return;
    }
    if ((e.key || "").toLowerCase() === "s" && !e.shiftKey && skipForm) {
      e.preventDefault();
      skipForm.requestSubmit();
      return;
    }
    var n = digitOf(e);
    if (n === null) return;
    if (kind === "bws") {
      var r = radio(e.shiftKey ? "worst" : "best", n);
      if (!r) return;
      e.preventDefault();
      r.checked = true;
      r.focus();
      update();
    } else if (n >= 1 && n <= 5 && dims.length) {
      var choice = dims[current].querySelector('input[value="' + n + '"]');
      if (!choice) return;
      e.preventDefault();
      choice.checked = true;
      update();
      if (current < dims.length - 1) {
        setCurrent(current + 1);
        focusDim(current);
      } else {
        choice.focus(); // Enter submits from here; Tab goes on to the comment
      }
    }
  });

  if (dims.length) setCurrent(0);
  update();
})();
