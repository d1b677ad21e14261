"""Writes the continuations that evaluation campaigns asked for, then opens the campaigns that are ready.

An admin's campaign (app/services/evaluation.py) files a GenerationRequest for every (version, prompt)
that has no continuation yet. The trainer calls ``fulfil_generation_requests`` between rounds: it loads
each requested policy from the model store, samples one continuation per requested prompt with the
round's generation settings, and marks the requests done. A version without model files (an imported
source) or one that fails to load marks its requests failed with the error; the campaign then opens
without those prompts (see evaluation._open).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from sqlalchemy import func, select

from app.config import Settings
from app.db import Database
from app.models import Continuation, GenerationRequest, ModelVersion, Prompt, utcnow
from app.services.evaluation import open_pending_campaigns, pending_generation_requests
from trainer import model_store
from trainer.config import TrainerSettings
from trainer.generate import generate_stories

log = logging.getLogger("storyloop.trainer")


def _finish(database: Database, request_ids: list[int], status: str, error: str | None = None) -> None:
    with database.write() as db:
        for request in db.scalars(select(GenerationRequest).where(GenerationRequest.id.in_(request_ids))):
            request.status, request.error, request.done_at = status, (error or None) and error[:2000], utcnow()


def fulfil_generation_requests(database: Database, settings: Settings, cfg: TrainerSettings,
                               device: str | None = None) -> dict[str, Any]:
    """Generates what pending requests need; returns {"done": n, "failed": n, "opened": [campaign ids]}."""
    with database.read() as db:
        pending = [(r.id, r.model_version_id, r.prompt_id) for r in pending_generation_requests(db)]
    by_version: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for request_id, version_id, prompt_id in pending:
        by_version[version_id].append((request_id, prompt_id))

    done = failed = 0
    gen = cfg.generation
    device = device or model_store.resolve_device(None)
    for version_id, requests in sorted(by_version.items()):
        with database.read() as db:
            version = db.get(ModelVersion, version_id)
            existing = set(db.scalars(select(Continuation.prompt_id).where(
                Continuation.model_version_id == version_id,
                Continuation.prompt_id.in_([p for _, p in requests])).group_by(Continuation.prompt_id)))
            texts = dict(db.execute(select(Prompt.id, Prompt.text).where(Prompt.id.in_([p for _, p in requests]))).all())
        already = [r for r, p in requests if p in existing]  # written meanwhile (e.g. by a round)
        if already:
            _finish(database, already, "done")
            done += len(already)
        todo = [(r, p) for r, p in requests if p not in existing]
        if not todo:
            continue
        if version is None or version.kind != "policy" or not version.path:
            reason = (f"{version.name if version else version_id}: "
                      + ("an imported source has no model to write new continuations" if version and version.kind == "source"
                         else "this version has no model files to generate with"))
            _finish(database, [r for r, _ in todo], "failed", reason)
            failed += len(todo)
            continue
        try:
            _, model, tokenizer = model_store.load_version(database, settings.model_store, version_id, device)
            prompts = [texts[p] for _, p in todo]
            outputs = generate_stories(model, tokenizer, prompts, 1, gen.max_new_tokens, gen.temperature,
                                       gen.top_p, gen.top_k, gen.batch_size, min_new_tokens=gen.min_new_tokens)
        except Exception as exc:  # a broken version must not stop the trainer
            log.error("generation for version %s failed: %s", version_id, exc)
            _finish(database, [r for r, _ in todo], "failed", f"{type(exc).__name__}: {exc}")
            failed += len(todo)
            continue
        used = {k: getattr(gen, k) for k in ("max_new_tokens", "min_new_tokens", "temperature", "top_p", "top_k")}
        with database.write() as db:
            for (request_id, prompt_id), [story] in zip(todo, outputs):
                request = db.get(GenerationRequest, request_id)
                request.done_at = utcnow()
                if story.text:
                    db.add(Continuation(prompt_id=prompt_id, model_version_id=version_id, text=story.text,
                                        generation_settings={**used, "ended": story.ended, "purpose": "evaluation"}))
                    request.status = "done"
                    done += 1
                else:
                    request.status, request.error = "failed", "the model wrote an empty continuation"
                    failed += 1
    with database.write() as db:
        opened = open_pending_campaigns(db)
    if pending or opened:
        log.info("evaluation generation: %s done, %s failed, campaigns opened: %s", done, failed, opened)
    return {"done": done, "failed": failed, "opened": opened}


def pending_count(database: Database) -> int:
    with database.read() as db:
        return db.scalar(select(func.count()).select_from(GenerationRequest).where(GenerationRequest.status == "pending")) or 0
