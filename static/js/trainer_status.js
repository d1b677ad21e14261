// Refreshes the trainer's "right now" lines every 3 seconds without reloading the page.
(function () {
  const box = document.getElementById("trainer-now");
  if (!box) return;
  const alive = document.getElementById("trainer-alive");
  const round = document.getElementById("trainer-round");

  function describe(s) {
    const r = s.current;
    if (!r) return "No round is queued or running.";
    let text = `Round ${r.id}: ${r.status}`;
    if (r.phase) text += ` · phase ${r.phase}`;
    if (r.total_steps) text += ` · step ${r.step} of ${r.total_steps}`;
    if (r.eta_seconds !== null) text += ` · about ${(r.eta_seconds / 60).toFixed(1)} min left`;
    return text;
  }

  async function poll() {
    try {
      const response = await fetch(box.dataset.statusUrl, { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const s = await response.json();
      alive.textContent = s.trainer_alive ? `Trainer ${s.trainer_holder} is running.` : "No trainer is running.";
      round.textContent = describe(s);
    } catch (e) { /* offline for a moment: try again at the next tick */ }
  }
  setInterval(poll, 3000);
})();
