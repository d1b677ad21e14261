"""Does the loop close? A dry-run campaign end to end, as a new user would run it.

On a fresh data folder this starts `storyloop demo` (the web app and the real trainer, SQLite), then:
round 0 (the base writes its stories), and for each of N rounds: simulated annotators make M
judgements through the HTTP API following a preference the trainer was not tuned on, the trainer
starts the next round by itself (or, if it does not within a minute, the benchmark asks for one
through the admin API and says so), and we wait for it to finish.

Then it prints, per version: the preference's (noise-free) score of its stories with a 95% bootstrap
interval over prompts, a paired Wilcoxon test against the base over prompts, distinct-2, length,
end-of-text rate and KL to the reference; per round: the share of the judgements before it that
showed the newest version's stories, how many prompts were judged, whether every prompt was judged
before any got a 3rd judgement of the newest batch, the reward model's held-out accuracy, and the
wall time per phase.

    .venv/bin/python benchmarks/loop_quality.py --rounds 3 --judgements 90 \\
        --preference "mix:dialogue=1,ends=0.5,repetition=-1" --noise 0.3

The pretrained base is cached by its configuration under <data>/corpus; --corpus-cache (default
data/corpus of this checkout, when it exists) is copied into the fresh folder so a cached base is
reused, as a restarted installation would. Everything else starts empty.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # base_quality's reader measures

from app.db import Database  # noqa: E402
from app.models import BwsJudgement, Continuation, ModelVersion, Prompt, Task, TaskItem, TrainingLog, TrainingRound  # noqa: E402
from app.services.scoring import bootstrap_mean_ci, paired_comparison  # noqa: E402
from app.simulate import SimulationConfig, preference_score, run_simulation  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := condition()) is not None:
            return value
        time.sleep(every)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


class Campaign:
    """The demo server + trainer on a fresh data folder, driven through HTTP."""

    def __init__(self, data_dir: Path, port: int, env: dict[str, str]):
        self.data_dir, self.url = data_dir, f"http://127.0.0.1:{port}"
        log = open(data_dir / "demo.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "demo", "--port", str(port)], cwd=ROOT,
                                     env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=60)
        wait_for(self._healthy, 120, "the demo server")
        accounts = dict(line.split(" ", 1) for line in (data_dir / "demo-accounts.txt").read_text().splitlines())
        self.admin_password = accounts["admin"]
        token = self.client.post("/api/v1/auth/token", json={"username": "admin", "password": self.admin_password})
        token.raise_for_status()
        self.admin = {"Authorization": f"Bearer {token.json()['access_token']}"}
        self.database = Database.from_url(f"sqlite:///{data_dir / 'storyloop.db'}")

    def _healthy(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"storyloop demo exited; see {self.data_dir / 'demo.log'}")
        try:
            return True if self.client.get("/healthz").status_code == 200 else None
        except httpx.HTTPError:
            return None

    def status(self) -> dict:
        response = self.client.get("/api/v1/admin/training/status", headers=self.admin)
        response.raise_for_status()
        return response.json()

    def rounds_done(self) -> int:
        return sum(r["status"] == "done" for r in self.status()["history"])

    def wait_round_done(self, done_before: int, timeout: float) -> list[float]:
        """Waits for the round; returns, for every poll that showed a whole-round ETA, the ratio of that
        ETA to the time the round really still took (1.0 = exact)."""
        etas: list[tuple[float, float]] = []  # (when, predicted seconds left)

        def finished():
            status = self.status()
            failed = [r for r in status["history"] if r["status"] == "failed"]
            if failed:
                raise RuntimeError(f"round {failed[0]['id']} failed: {failed[0]['error']}")
            if status["current"] and status["current"].get("round_eta_seconds"):
                etas.append((time.monotonic(), status["current"]["round_eta_seconds"]))
            return True if sum(r["status"] == "done" for r in status["history"]) > done_before else None
        wait_for(finished, timeout, "the round to finish", every=2.0)
        end = time.monotonic()
        return [eta / max(end - when, 1.0) for when, eta in etas if end - when > 10]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


# ---------------------------------------------------------------- measures, read from the database


def round_rows(db) -> list[TrainingRound]:
    return db.scalars(select(TrainingRound).where(TrainingRound.status == "done").order_by(TrainingRound.id)).all()


def judgements_between(db, after_id: int, upto_id: int):
    """(judgement id, prompt id, batch id, versions shown) in id order."""
    rows = db.execute(select(BwsJudgement.id, Task.prompt_id, Task.batch_id, BwsJudgement.shown_order)
                      .join(Task, Task.id == BwsJudgement.task_id)
                      .where(BwsJudgement.id > after_id, BwsJudgement.id <= upto_id).order_by(BwsJudgement.id)).all()
    needed = {c for r in rows for c in r.shown_order}
    version_of = dict(db.execute(select(Continuation.id, Continuation.model_version_id)
                                 .where(Continuation.id.in_(needed))).all()) if needed else {}
    return [(r.id, r.prompt_id, r.batch_id, {version_of[c] for c in r.shown_order}) for r in rows]


def spread_ok(judged: list[tuple], batch_id: int, prompts_in_batch: set[int]) -> bool | None:
    """Every prompt of the batch had a judgement of it before any prompt got its 3rd (None: no 3rd yet)."""
    counts: dict[int, int] = defaultdict(int)
    for _, prompt_id, b, _ in judged:
        if b != batch_id:
            continue
        counts[prompt_id] += 1
        if counts[prompt_id] == 3:
            return all(counts[p] >= 1 for p in prompts_in_batch)
    return None


def version_report(db, score, base_id: int) -> list[dict]:
    active = set(db.scalars(select(Prompt.id).where(Prompt.is_active)))
    versions = db.scalars(select(ModelVersion).where(ModelVersion.kind.in_(("policy", "source")))
                          .order_by(ModelVersion.id)).all()
    per_prompt: dict[int, dict[int, list[float]]] = {}
    for v in versions:
        by_prompt: dict[int, list[float]] = defaultdict(list)
        for prompt_id, text in db.execute(select(Continuation.prompt_id, Continuation.text)
                                          .where(Continuation.model_version_id == v.id)):
            if prompt_id in active:
                by_prompt[prompt_id].append(score(text))
        per_prompt[v.id] = by_prompt
    base_means = {p: sum(s) / len(s) for p, s in per_prompt[base_id].items()}
    report = []
    for v in versions:
        means = {p: sum(s) / len(s) for p, s in per_prompt[v.id].items()}
        if not means:
            continue
        mean, low, high = bootstrap_mean_ci(list(means.values()))
        auto = v.metrics.get("auto", {})
        test = paired_comparison(means, base_means) if v.id != base_id else None
        report.append({
            "version": v.name, "id": v.id, "kind": v.kind, "stories": sum(len(s) for s in per_prompt[v.id].values()),
            "preference": mean, "ci95": [low, high],
            "vs_base_diff": test and test["mean_difference"], "vs_base_p": test and test["p_value"],
            "distinct_2": auto.get("distinct_2"), "mean_length": auto.get("mean_length"),
            "length_p10_p50_p90": [auto.get(f"length_p{q}") for q in (10, 50, 90)],
            "eos_rate": auto.get("eos_rate"), "kl_to_reference": auto.get("kl_to_reference"),
            "perplexity_under_base": auto.get("perplexity"), "copy_similarity": auto.get("copy_similarity"),
        })
    return report


def reader_report(database: Database, data_dir: Path, score) -> tuple[dict[int, dict], dict[int, dict]]:
    """What a reader would see, per version: on-topic (story-prompt similarity under MiniLM) and
    grammaticality (link grammar), as benchmarks/base_quality.py measures them; and per reward model, how
    it ranks the six hand-written demo writers against the preference (Spearman over the writers' means).
    Returns ({version id: measures}, {reward version id: ranking})."""
    from scipy.stats import spearmanr

    from app.services.story_text import completion_text
    from base_quality import GrammarUnavailable, link_grammar_verdicts, reader_measures
    from trainer import model_store
    from trainer.ppo import score_sequences
    from trainer.pretrained import SentenceEncoder

    grammar_python: str | None = "/usr/bin/python3"
    try:
        link_grammar_verdicts(["The cat sat on the mat."], grammar_python)
    except GrammarUnavailable as e:
        print(f"no grammaticality figure: {e}", file=sys.stderr)
        grammar_python = None
    encoder = SentenceEncoder()
    with database.read() as db:
        prompts = dict(db.execute(select(Prompt.id, Prompt.text).where(Prompt.is_active).order_by(Prompt.id)).all())
        index = {pid: i for i, pid in enumerate(prompts)}
        versions = db.scalars(select(ModelVersion).where(ModelVersion.kind.in_(("policy", "source")))
                              .order_by(ModelVersion.id)).all()
        stories = {v.id: [(pid, completion_text(t)) for pid, t in db.execute(
            select(Continuation.prompt_id, Continuation.text).where(Continuation.model_version_id == v.id))
            if pid in index] for v in versions}
        sources = {v.id: v.name for v in versions if v.kind == "source"}
        rewards = [r.id for r in db.scalars(select(ModelVersion).where(ModelVersion.kind == "reward")
                                            .order_by(ModelVersion.id))]
    readers = {vid: reader_measures(list(prompts.values()), [{"prompt": index[pid], "text": t} for pid, t in rows],
                                    encoder, grammar_python) for vid, rows in stories.items() if rows}
    written = [(sources[vid], prompts[pid], t) for vid in sources for pid, t in stories[vid]]
    true_mean = {w: sum(score(t) for n, _, t in written if n == w) / sum(n == w for n, _, _ in written)
                 for w in sources.values()}
    rankings = {}
    for rid in rewards:
        _, model, tokenizer = model_store.load_version(database, data_dir / "models", rid)
        scores = score_sequences(model, tokenizer, [p for _, p, _ in written], [t for *_, t in written]).tolist()
        rm_mean = {w: sum(s for (n, _, _), s in zip(written, scores) if n == w) / sum(n == w for n, _, _ in written)
                   for w in sources.values()}
        rankings[rid] = {"spearman": float(spearmanr([true_mean[w] for w in true_mean],
                                                     [rm_mean[w] for w in true_mean]).statistic),
                         "writers_by_reward_model": sorted(rm_mean, key=rm_mean.get, reverse=True),
                         "writers_by_preference": sorted(true_mean, key=true_mean.get, reverse=True)}
    return readers, rankings


def fmt(value, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--judgements", type=int, default=90, help="M: judgements between rounds")
    parser.add_argument("--preference", default="mix:dialogue=1,ends=0.5,repetition=-1")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--annotators", type=int, default=6)
    parser.add_argument("--preset", default="demo", help="bootstrap preset of the base (tiny for a quick check)")
    parser.add_argument("--corpus-cache", type=Path, default=ROOT / "data" / "corpus")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a new temporary folder")
    parser.add_argument("--round-timeout", type=float, default=1800)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for the trainer and app")
    parser.add_argument("--bakeoff", default="",
                        help="after the rounds, M more judgements and a bake-off round of these algorithms "
                             "(e.g. alol,dpo), each trained from the newest version; with --rounds 0 and the "
                             "--data-dir of a finished campaign, it continues that campaign")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: report on the finished campaign in --data-dir")
    args = parser.parse_args()
    if args.report_only and args.data_dir is None:
        parser.error("--report-only needs --data-dir")

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="storyloop-loop-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.corpus_cache.is_dir() and not (data_dir / "corpus").exists():
        shutil.copytree(args.corpus_cache, data_dir / "corpus", symlinks=True)
    env = {**os.environ, "STORYLOOP_DATA_DIR": str(data_dir), "STORYLOOP_DATABASE_URL": "",
           "STORYLOOP_TRAINER_POLL_SECONDS": "2", "STORYLOOP_TRAINER_BOOTSTRAP_PRESET": args.preset,
           "STORYLOOP_TRAINER_MIN_NEWEST_JUDGEMENTS": str(args.judgements), "TOKENIZERS_PARALLELISM": "false"}
    env.update(dict(kv.split("=", 1) for kv in args.env))
    print(f"data folder: {data_dir}; preference {args.preference!r}, noise {args.noise}; "
          f"{args.rounds} rounds x {args.judgements} judgements", flush=True)

    score = preference_score(args.preference)
    triggers, eta_ratios, started = [], {}, time.monotonic()
    if not args.report_only:
        if args.bakeoff:  # the bake-off is asked for by the admin: no automatic round may start before it
            env["STORYLOOP_TRAINER_MIN_NEWEST_JUDGEMENTS"] = "1000000"
        campaign = Campaign(data_dir, free_port(), env)
        try:
            print("round 0: the base policy writes its stories ...", flush=True)
            campaign.wait_round_done(0, args.round_timeout)
            first = campaign.rounds_done()
            for i in range(first, first + args.rounds):
                done = campaign.rounds_done()
                config = SimulationConfig(annotators=args.annotators, judgements=args.judgements,
                                          preference=args.preference, noise=args.noise, seed=i, username_prefix=f"sim{i}-")
                result = run_simulation(campaign.url, "admin", campaign.admin_password, config)
                print(f"  {result.judgements} judgements in", flush=True)
                try:
                    if args.bakeoff:
                        raise TimeoutError  # automatic rounds are off for this run
                    wait_for(lambda: True if campaign.status()["current"] or campaign.rounds_done() > done else None,
                             60, "the trainer to start a round by itself", every=2.0)
                    triggers.append("auto")
                except TimeoutError:
                    campaign.client.post("/api/v1/admin/training/rounds", headers=campaign.admin).raise_for_status()
                    triggers.append("admin (the automatic trigger did not fire within 60 s)")
                print(f"round {i}: training ({triggers[-1]}) ...", flush=True)
                eta_ratios[i] = campaign.wait_round_done(done, args.round_timeout)
            if args.bakeoff:
                done = campaign.rounds_done()
                config = SimulationConfig(annotators=args.annotators, judgements=args.judgements, preference=args.preference,
                                          noise=args.noise, seed=100 + done, username_prefix=f"simb{done}-")
                print(f"  {run_simulation(campaign.url, 'admin', campaign.admin_password, config).judgements} "
                      "judgements in", flush=True)
                campaign.client.post("/api/v1/admin/training/rounds", headers=campaign.admin,
                                     json={"bakeoff": args.bakeoff.split(",")}).raise_for_status()
                print(f"bake-off round ({args.bakeoff}) ...", flush=True)
                campaign.wait_round_done(done, args.round_timeout * 2)
        finally:
            campaign.stop()
    total = time.monotonic() - started
    database = Database.from_url(f"sqlite:///{data_dir / 'storyloop.db'}")
    readers, rankings = reader_report(database, data_dir, score)

    with database.read() as db:
        rounds = round_rows(db)
        base_id = rounds[0].policy_version_id
        active = db.scalar(select(func.count()).select_from(Prompt).where(Prompt.is_active))
        per_round = []
        for prev, r in zip(rounds, rounds[1:]):
            # The judgements this round learnt from that came after the previous round was done.
            after = db.scalar(select(func.max(BwsJudgement.id)).where(BwsJudgement.created_at <= prev.finished_at)) or 0
            upto = db.scalar(select(func.max(BwsJudgement.id)).where(BwsJudgement.created_at <= r.started_at)) or 0
            judged = judgements_between(db, after, upto)
            newest = prev.policy_version_id
            batch_prompts = set(db.scalars(select(Task.prompt_id).where(Task.batch_id == prev.batch_id)))
            reward = db.get(ModelVersion, r.reward_version_id)
            timings = {t.metrics["phase"]: t.metrics["seconds"] for t in db.scalars(
                select(TrainingLog).where(TrainingLog.round_id == r.id, TrainingLog.phase == "timing"))}
            ppo_steps = [t.metrics for t in db.scalars(select(TrainingLog).where(TrainingLog.round_id == r.id,
                                                                                   TrainingLog.phase == "ppo"))
                         if "kl" in t.metrics]
            ppo = {k: sum(m[k] for m in ppo_steps) / len(ppo_steps) for k in ("kl", "clipfrac", "approx_kl", "score")
                   if ppo_steps and all(k in m for m in ppo_steps)}
            per_round.append({
                "round": len(per_round) + 1, "round_id": r.id, "judgements": len(judged),
                "share_showing_newest": sum(newest in v for *_, v in judged) / max(1, len(judged)),
                "share_on_newest_batch": sum(b == prev.batch_id for _, _, b, _ in judged) / max(1, len(judged)),
                "prompts_judged": len({p for _, p, _, _ in judged}), "active_prompts": active,
                "spread_before_third": spread_ok(judged, prev.batch_id, batch_prompts),
                "reward_held_out_accuracy": reward.metrics.get("held_out_accuracy"),
                "reward_train_pairs": reward.metrics.get("train_pairs"),
                "seconds": (r.finished_at - r.started_at).total_seconds(), "phases": timings,
                "ppo_mean": ppo,  # PPO's own logged figures, averaged over the round's steps
                "reward_writers": rankings.get(r.reward_version_id),
                "policy_compute": (db.get(ModelVersion, r.policy_version_id).metrics.get("compute")
                                   if r.policy_version_id else None),  # a bake-off's are in its versions
            })
        round0 = rounds[0]
        r0_timings = {t.metrics["phase"]: t.metrics["seconds"] for t in db.scalars(
            select(TrainingLog).where(TrainingLog.round_id == round0.id, TrainingLog.phase == "timing"))}
        versions = version_report(db, score, base_id)
        for v in versions:
            v["reader"] = readers.get(v["id"], {})
        samples = {}
        first_prompts = list(db.scalars(select(Prompt.id).where(Prompt.is_active).order_by(Prompt.id).limit(3)))
        newest_id = rounds[-1].policy_version_id
        for pid in first_prompts:
            prompt = db.get(Prompt, pid).text
            pick = lambda vid: db.scalar(select(Continuation.text).where(  # noqa: E731
                Continuation.prompt_id == pid, Continuation.model_version_id == vid).order_by(Continuation.id).limit(1))
            samples[prompt] = {"base": pick(base_id), "newest": pick(newest_id)}

    print(f"\n== versions (preference {args.preference!r}, noise-free score of each version's stories; "
          f"interval and test over prompts) ==")
    print(f"{'version':<22}{'stories':>8}{'pref':>8}{'95% CI':>18}{'vs base':>9}{'p':>9}{'dist-2':>8}"
          f"{'words':>7}{'EOS':>6}{'KL ref':>8}{'ppl':>8}{'copy':>6}")
    for v in versions:
        print(f"{v['version']:<22}{v['stories']:>8}{v['preference']:>8.3f}"
              f"{'[' + format(v['ci95'][0], '.3f') + ', ' + format(v['ci95'][1], '.3f') + ']':>18}"
              f"{fmt(v['vs_base_diff'], '+.3f'):>9}{fmt(v['vs_base_p'], '.2g'):>9}{fmt(v['distinct_2']):>8}"
              f"{fmt(v['mean_length'], '.1f'):>7}{fmt(v['eos_rate'], '.2f'):>6}{fmt(v['kl_to_reference'], '.2f'):>8}"
              f"{fmt(v['perplexity_under_base'], '.0f'):>8}{fmt(v['copy_similarity'], '.2f'):>6}")
    print("\n== what a reader sees (benchmarks/base_quality.py's measures; words p10/p50/p90 by the trainer's count) ==")
    print(f"{'version':<22}{'on-topic':>9}{'other':>7}{'gram. sent.':>12}{'all gram.':>10}{'story talk':>11}"
          f"{'words p10/p50/p90':>19}")
    for v in versions:
        rd = v["reader"]
        print(f"{v['version']:<22}{fmt(rd.get('prompt_similarity'), '.3f'):>9}{fmt(rd.get('other_prompt_similarity'), '.3f'):>7}"
              f"{fmt(rd.get('grammatical_sentences'), '.2f'):>12}{fmt(rd.get('stories_all_grammatical'), '.2f'):>10}"
              f"{fmt(rd.get('story_talk'), '.2f'):>11}{'/'.join(fmt(x, '.0f') for x in v['length_p10_p50_p90']):>19}")
    print("\n== rounds ==")
    print(f"round 0 (base, id {round0.id}): {(round0.finished_at - round0.started_at).total_seconds():.0f} s; phases "
          + ", ".join(f"{k} {v:.0f} s" for k, v in r0_timings.items()))
    for (i, ratios), r in zip(eta_ratios.items(), per_round):
        if ratios:
            inside = sum(0.5 <= x <= 2 for x in ratios) / len(ratios)
            r["eta_within_factor_2"] = inside
            print(f"round {r['round']}: whole-round ETA / time really left: median {sorted(ratios)[len(ratios) // 2]:.2f}, "
                  f"{inside:.0%} of {len(ratios)} readings within a factor of two")
    for r, trigger in zip(per_round, triggers):
        print(f"round {r['round']} (id {r['round_id']}): {r['judgements']} judgements before it, {r['share_showing_newest']:.0%} showed the "
              f"newest version ({r['share_on_newest_batch']:.0%} on its batch), {r['prompts_judged']}/{r['active_prompts']} "
              f"prompts judged, spread before a 3rd judgement: {r['spread_before_third']}; reward held-out accuracy "
              f"{fmt(r['reward_held_out_accuracy'], '.2f')} ({r['reward_train_pairs']} train pairs); trigger {trigger}; "
              f"{r['seconds']:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in r["phases"].items()))
        if r["reward_writers"]:
            w = r["reward_writers"]
            print(f"  reward model's ranking of the 6 demo writers: Spearman {w['spearman']:.2f} with the preference "
                  f"({', '.join(w['writers_by_reward_model'])}; preference: {', '.join(w['writers_by_preference'])})")
        if r["policy_compute"]:
            c = r["policy_compute"]
            print(f"  policy update: {c['seconds']:.0f} s, peak memory {c['peak_memory_mb']:.0f} MB on {c['device']}")
        if r["ppo_mean"]:
            print(f"  PPO, mean over the round's steps: " + ", ".join(f"{k} {v:.4g}" for k, v in r["ppo_mean"].items()))
    if len(per_round) >= 3:
        print(f"round {per_round[2]['round']} / round {per_round[1]['round']} time: "
              f"{per_round[2]['seconds'] / per_round[1]['seconds']:.2f}")
    if not args.report_only:
        print(f"\nwhole campaign: {total / 60:.1f} min")
    print("\n== samples (first story of each, unedited) ==")
    for prompt, pair in samples.items():
        print(f"PROMPT: {prompt}\n  base:   {pair['base']}\n  newest: {pair['newest']}")
    if args.json:
        args.json.write_text(json.dumps({"versions": versions, "rounds": per_round, "triggers": triggers,
                                         "samples": samples, "seconds": total}, indent=2, default=str))


if __name__ == "__main__":
    main()
