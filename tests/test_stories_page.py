"""The stories page and API: per prompt, what each version wrote side by side, judged or not, with BWS
counting scores over the prompt's judgements; filters, paging and role checks."""

import re

import pytest

from sqlalchemy import select

from app.models import Continuation, ModelVersion, Prompt, Task, User
from app.services import gold, stories
from tests.conftest import make_user, token_headers
from tests.test_admin_pages import login, text_of
from tests.test_model_versions_page import seed_lineage

UNJUDGED = "policy-r2 wrote this and nobody has judged it"


def seed_stories(database) -> dict[str, int]:
    """seed_lineage (one prompt: base x3 and policy-r1 x2, judged) plus an unjudged policy-r2 continuation of that
    prompt, and a second prompt with only a source's continuation."""
    ids = seed_lineage(database)
    with database.write() as db:
        prompt_id = db.query(Prompt).one().id
        c = Continuation(prompt_id=prompt_id, model_version_id=ids["r2"], text=UNJUDGED)
        other = Prompt(text="A fox learned to read.", external_id="fox")
        db.add_all([c, other])
        db.flush()
        db.add(Continuation(prompt_id=other.id, model_version_id=ids["source"], text="The fox read <b>everything</b>."))
        db.flush()
        ids.update(prompt=prompt_id, other=other.id, unjudged=c.id)
    return ids


def test_stories_service_scores_and_unjudged(database):
    ids = seed_stories(database)
    page = stories.stories(database)
    assert page.total == 2 and [p.prompt_id for p in page.prompts] == [ids["prompt"], ids["other"]]
    assert [v.name for v in page.versions] == ["base-demo", "policy-r1", "policy-r2", "human-stories"]
    assert [v.round_number for v in page.versions] == [0, 1, 2, None]  # round 0: the base's
    first = page.prompts[0]
    assert first.judgements == 3
    base = first.by_version[ids["base"]]
    # base[0]: 3 appearances (mixed x2, single x1), best once (single), worst once -> 0; base[1]: worst once -> -1/3.
    assert [(s.counting, s.appearances, s.best, s.worst) for s in base] == [
        (0.0, 3, 1, 1), (pytest.approx(-1 / 3), 3, 0, 1), (0.0, 1, 0, 0)]
    r1 = first.by_version[ids["r1"]]
    assert [(s.counting, s.appearances) for s in r1] == [(0.0, 2), (0.5, 2)]
    (unjudged,) = first.by_version[ids["r2"]]
    assert (unjudged.text, unjudged.counting, unjudged.appearances) == (UNJUDGED, None, 0)

    only_r2 = stories.stories(database, version_ids=[ids["r2"]])
    assert only_r2.total == 1 and [v.name for v in only_r2.versions] == ["policy-r2"]
    assert list(only_r2.prompts[0].by_version) == [ids["r2"]]
    assert stories.stories(database, q="fox").total == 1
    assert [p.prompt_id for p in stories.stories(database, offset=1, limit=1).prompts] == [ids["other"]]


def test_stories_page_a_row_per_version(client, database):
    """Under each prompt a row per version that wrote for it, in training order; the others named in one line."""
    ids = seed_stories(database)
    make_user(database, "root", "admin")
    login(client, "root")
    page = client.get("/admin/stories")
    assert page.status_code == 200, page.text
    group = re.search(rf'<tbody class="prompt-group" id="prompt-{ids["prompt"]}" data-prompt="{ids["prompt"]}">(.*?)</tbody>',
                      page.text, re.S).group(1)
    rows = re.findall(r'<tr class="version-row" data-version="(\d+)">', group)
    assert rows == [str(ids[k]) for k in ("base", "r1", "r2")]
    cells = re.findall(r'<td data-version="(\d+)">(.*?)</td>', group, re.S)
    assert [int(v) for v, _ in cells] == [ids["base"], ids["r1"], ids["r2"]]
    assert re.search(r'<tr class="missing-row">.*No stories of this prompt from\s*human-stories\.', group, re.S)
    r2_cell = dict(cells)[str(ids["r2"])]
    assert UNJUDGED in r2_cell and "not judged yet" in r2_cell
    assert "+0.500" in dict(cells)[str(ids["r1"])]
    assert "&lt;b&gt;everything&lt;/b&gt;" in page.text  # autoescaped
    assert 'href="/admin/stories" aria-current="page"' in page.text
    text = text_of(page)
    assert "The old clock struck thirteen." in text and "3 BWS judgements" in text and "Prompts 1–2 of 2" in text

    filtered = client.get(f"/admin/stories?version_id={ids['r2']}")
    assert UNJUDGED in filtered.text and "base-demo story 0" not in filtered.text
    paged = client.get("/admin/stories?limit=1")
    assert "Next →" in paged.text and "A fox learned to read." not in paged.text
    second = client.get("/admin/stories?limit=1&offset=1")
    assert "A fox learned to read." in second.text and "← Previous" in second.text
    assert "No stories match" in client.get("/admin/stories?q=nothing-like-this").text


def test_stories_api(client, database, admin_headers):
    ids = seed_stories(database)
    r = client.get("/api/v1/admin/stories", params={"prompt_id": ids["prompt"], "version_id": ids["r2"]},
                   headers=admin_headers)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["total"] == 1 and [v["name"] for v in data["versions"]] == ["policy-r2"]
    (story,) = data["prompts"][0]["by_version"][str(ids["r2"])]
    assert story["continuation_id"] == ids["unjudged"] and story["counting"] is None and story["appearances"] == 0
    everything = client.get("/api/v1/admin/stories", params={"offset": 0, "limit": 1}, headers=admin_headers).json()
    assert everything["total"] == 2 and len(everything["prompts"]) == 1
    assert client.get("/api/v1/admin/stories", params={"limit": 0}, headers=admin_headers).status_code == 422


def test_stories_need_an_admin(client, database):
    seed_stories(database)
    make_user(database, "ann", "annotator")
    assert client.get("/api/v1/admin/stories", headers=token_headers(client, "ann")).status_code == 403
    assert client.get("/api/v1/admin/stories").status_code == 401
    login(client, "ann")
    assert client.get("/admin/stories", headers={"accept": "text/html"}).status_code == 403


def test_stories_page_empty(client, database):
    with database.write() as db:
        db.add(ModelVersion(name="lonely", kind="policy"))
    make_user(database, "root", "admin")
    login(client, "root")
    page = client.get("/admin/stories")
    assert page.status_code == 200 and "No stories yet" in page.text


def test_stories_count_only_usable_judgements(database):
    """As exports and training do (gold.usable): an excluded annotator's judgements and answers to gold
    tasks leave the stories' scores and appearances."""
    ids = seed_stories(database)
    admin = make_user(database, "root", "admin")
    with database.write() as db:
        ann2 = db.scalar(select(User.id).where(User.username == "ann2"))
        gold.exclude(db, ann2, admin, "gold accuracy 0 %")
    first = stories.stories(database).prompts[0]
    assert first.judgements == 2  # ann1's two
    # mixed tuple, ann1: best r1[0], worst base[0]; single tuple, ann1: best base[0], worst base[1]
    assert [(s.counting, s.appearances, s.best, s.worst) for s in first.by_version[ids["base"]]] == [
        (0.0, 2, 1, 1), (-0.5, 2, 0, 1), (0.0, 1, 0, 0)]
    assert [(s.counting, s.appearances) for s in first.by_version[ids["r1"]]] == [(1.0, 1), (0.0, 1)]

    with database.write() as db:  # the unmixed tuple becomes a gold check: its answer is a check, not data
        single = db.scalar(select(Task.id).where(Task.prompt_id == ids["prompt"], Task.required == 1))
        gold.mark(db, single, gold.GoldAnswer(best_id=first.by_version[ids["base"]][0].continuation_id))
    first = stories.stories(database).prompts[0]
    assert first.judgements == 1
    # left: ann1 on the mixed tuple (base[0], base[1], r1[0], r1[1])
    assert [(s.counting, s.appearances) for s in first.by_version[ids["base"]]] == [(-1.0, 1), (0.0, 1), (None, 0)]
