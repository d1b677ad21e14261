"""Automatic metrics (distinct-n by hand, reward and perplexity with tiny models) and the trainer's
generation of continuations that evaluation campaigns asked for."""

import math
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from app.config import Settings
from app.db import Database
from app.migrate import upgrade_to_head
from app.models import Campaign, Continuation, GenerationRequest, ModelVersion, Prompt
from app.services import evaluation
from app.services.evaluation import CampaignCreate
from tests.tiny_models import pretrain_lm, story_corpus, tiny_lm, train_tiny_tokenizer
from trainer.auto_metrics import auto_metrics, distinct_n, reference_perplexity


def test_distinct_n_by_hand():
    texts = ["the cat saw the cat", "The dog saw a cat"]
    # words: the cat saw the cat | the dog saw a cat -> 10 unigrams, distinct {the, cat, saw, dog, a} = 5
    assert distinct_n(texts, 1) == pytest.approx(5 / 10)
    # bigrams: (the cat)(cat saw)(saw the)(the cat) | (the dog)(dog saw)(saw a)(a cat) -> 8, distinct 7
    assert distinct_n(texts, 2) == pytest.approx(7 / 8)
    assert distinct_n(["one"], 2) is None and distinct_n([], 1) is None


def test_auto_metrics_without_models_is_text_only():
    m = auto_metrics(["p1", "p2"], ["a b c", "a b"])
    assert m["mean_length"] == 2.5 and m["distinct_1"] == pytest.approx(3 / 5) and m["n"] == 2
    assert m["mean_reward"] is None and m["perplexity"] is None


@pytest.fixture(scope="module")
def tiny():
    pairs = story_corpus(800)
    tok = train_tiny_tokenizer(p + c for p, c in pairs)
    lm = pretrain_lm(tiny_lm(tok, n_positions=64), tok, [p + c for p, c in pairs], steps=120)
    return lm, tok, pairs


def test_auto_metrics_with_tiny_models(tiny):
    from tests.tiny_models import tiny_reward_model

    lm, tok, pairs = tiny
    prompts = [p for p, _ in pairs[:12]]
    in_domain = [c.strip() for _, c in pairs[:12]]
    gibberish = ["zq xv qq zz kk jj vv" for _ in prompts]
    rm = tiny_reward_model(tok, init_from=lm).eval()
    m = auto_metrics(prompts, in_domain, reward_model=rm, reward_tokenizer=tok, reference_model=lm, reference_tokenizer=tok)
    assert math.isfinite(m["mean_reward"]) and m["perplexity"] > 1
    # The reference model finds its own kind of story far likelier than gibberish.
    assert reference_perplexity(lm, tok, prompts, [" " + g for g in gibberish]) > 5 * m["perplexity"]
    # Perplexity by hand for one pair: exp(mean NLL of the completion tokens given the prompt).
    p, c = prompts[0], " " + in_domain[0]
    ids = tok(p)["input_ids"] + tok(c)["input_ids"]
    n_c = len(tok(c)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(lm(torch.tensor([ids])).logits[0, :-1].float(), -1)
    nll = -sum(logp[i - 1, ids[i]].item() for i in range(len(ids) - n_c, len(ids)))
    assert reference_perplexity(lm, tok, [p], [c]) == pytest.approx(math.exp(nll / n_c), rel=1e-4)


def test_trainer_fulfils_generation_requests_and_opens_the_campaign(tiny, tmp_path: Path):
    from trainer import model_store
    from trainer.config import TrainerSettings
    from trainer.eval_generation import fulfil_generation_requests

    lm, tok, _ = tiny
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'gen.db'}", data_dir=tmp_path / "data", secret_key="x")
    upgrade_to_head(settings.resolved_database_url)
    database = Database.from_url(settings.resolved_database_url)
    policy_id = model_store.save_version(database, settings.model_store, kind="policy", name="tiny-policy", parent_id=None,
                                         algorithm="pretrain", settings={}, metrics={}, model=lm, tokenizer=tok)
    with database.write() as db:
        source = ModelVersion(name="imported", kind="source", algorithm="import")
        prompts = [Prompt(text=t) for t in ("once upon a time", "one day", "at night")]
        db.add_all([source, *prompts])
        db.flush()
        # The source has stories for the first two prompts only; the policy has none.
        for p in prompts[:2]:
            db.add(Continuation(prompt_id=p.id, model_version_id=source.id, text="the fox met a king ."))
        db.flush()
        campaign = evaluation.create_campaign(db, CampaignCreate(model_version_ids=[policy_id, source.id],
                                                                 prompt_ids=[p.id for p in prompts]))
        campaign_id, source_id = campaign.id, source.id
    cfg = TrainerSettings()
    cfg.generation.max_new_tokens = 8
    result = fulfil_generation_requests(database, settings, cfg, device="cpu")
    assert result == {"done": 3, "failed": 1, "opened": [campaign_id]}
    with database.read() as db:
        failed = db.scalar(select(GenerationRequest).where(GenerationRequest.status == "failed"))
        assert failed.model_version_id == source_id and "imported source" in failed.error
        written = db.scalars(select(Continuation).where(Continuation.model_version_id == policy_id)).all()
        assert len(written) == 3 and all(c.generation_settings["purpose"] == "evaluation" for c in written)
        info = evaluation.get_campaign(db, campaign_id)
        assert info.status == "open" and info.items == 4 and "1 prompt(s) left out" in db.get(Campaign, campaign_id).note
    # Nothing pending: a second call does nothing.
    assert fulfil_generation_requests(database, settings, cfg, device="cpu") == {"done": 0, "failed": 0, "opened": []}
    database.engine.dispose()
