"""Blind means blind: from everything annotators and evaluators receive, nobody can tell versions apart.

The set-up is the demo's: continuations imported prompt by prompt, writer by writer, so that their ids
follow the versions (within a prompt the lower id is the older version, and (id - first) % 4 names the
writer). Annotators and evaluators then work through BWS tuples, rating items and a campaign's
evaluation items over the JSON API and the HTML pages, and the test tries to tell the oldest version
from the newest with every predictor it can build from what they received: position in a task, order
of arrival, handle order (as text and as a number), every numeric field, every attribute in the DOM.
Each must score like a coin: a two-sided binomial test against 50 % must not reject at 1e-6 (chance
fails that about once in a million runs per predictor). The same test applied to the stored
continuation ids rejects chance, so the test can fail, and would have failed on the old views.
"""

import base64
import random
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient
from scipy import stats
from sqlalchemy import func, select

from app.models import Assignment, BwsJudgement, Continuation, ModelVersion, Prompt, Rating
from app.services import evaluation, tasks
from app.services.item_handles import ItemHandles
from tests.conftest import make_user, token_headers
from tests.factories import HANDLES
from tests.test_pages_annotate import login

VERSIONS = 4  # writers, imported in this order for every prompt
PROMPTS = 24
OLDEST, NEWEST = 0, VERSIONS - 1  # the pair each trial asks about
FIRST_ID = 31_400_001  # continuation ids: long, so that finding one in a response means it leaked
CHANCE_P = 1e-6
MIN_TRIALS = 20


def chance_passes(correct: int, trials: int) -> bool:
    """Whether `correct` right guesses out of `trials` fair coin flips is a plausible outcome."""
    return stats.binomtest(correct, trials, 0.5).pvalue > CHANCE_P


# ---------------------------------------------------------------- what people receive


class _Attributes(HTMLParser):
    """Every attribute on the page, and those inside each item card (class "cont"), in order."""

    def __init__(self):
        super().__init__()
        self.page: dict[str, str] = {}
        self.items: list[dict[str, str]] = []
        self._seen: dict[str, int] = {}
        self._item_depth = 0  # > 0 while inside an item card

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if self._item_depth:
            self._item_depth += 1
        elif "cont" in (attributes.get("class") or "").split():
            self._item_depth = 1
            self.items.append({})
        for name, value in attributes.items():
            key = f"{tag}[{name}]"
            self._seen[key] = self._seen.get(key, 0) + 1
            self.page[f"{key}#{self._seen[key]}"] = value or ""
            if self._item_depth:
                self.items[-1][key] = value or ""

    def handle_endtag(self, tag):
        if self._item_depth:
            self._item_depth -= 1

    def handle_startendtag(self, tag, attrs):  # <input ... />: no end tag follows
        self.handle_starttag(tag, attrs)
        self.handle_endtag(tag)


def _void_safe(html: str) -> str:
    # <input> and friends have no end tag in HTML: close them, so that depths stay right.
    return re.sub(r"<(input|br|img|meta|link|hr)\b([^>]*?)/?>", r"<\1\2 />", html)


def attributes_of(html: str) -> _Attributes:
    parser = _Attributes()
    parser.feed(_void_safe(html))
    return parser


def features(values: dict[str, object]) -> dict[str, object]:
    """Values a predictor can order by: each as it is, and the numbers inside strings (handles as
    base64 numbers too). A predictor guesses "the smaller value is the older version"."""
    found: dict[str, object] = {}
    for name, value in values.items():
        found[name] = value
        if isinstance(value, str):
            numbers = tuple(int(n) for n in re.findall(r"\d+", value))
            if numbers:
                found[f"{name} (numbers in it)"] = numbers
            if re.fullmatch(r"[A-Za-z0-9_-]{16}", value):
                found[f"{name} (as a base64 number)"] = int.from_bytes(base64.urlsafe_b64decode(value), "big")
    return found


@dataclass
class Person:
    name: str
    role: str
    client: TestClient
    headers: dict[str, str]
    received: list[str] = field(default_factory=list)  # every response body, JSON and HTML
    tasks: list[tuple[dict, str]] = field(default_factory=list)  # (task JSON, task page HTML) in arrival order


def work_through(person: Person, kind: str | None = None) -> None:
    """Takes every task the person is given, reads it through the API and the page, and answers it:
    BWS with the first shown as best and the last as worst (by handle), ratings with threes."""
    query = f"?kind={kind}" if kind else ""
    while (response := person.client.post(f"/api/v1/tasks/next{query}", headers=person.headers)).status_code == 200:
        task = response.json()
        assignment = task["assignment_id"]
        again = person.client.get(f"/api/v1/tasks/{assignment}", headers=person.headers)
        page = person.client.get(f"/task/{assignment}", headers={"Accept": "text/html"})
        assert again.json() == task and page.status_code == 200
        person.received += [response.text, again.text, page.text]
        person.tasks.append((task, page.text))
        if task["kind"] == "bws":
            body = {"best": task["items"][0]["handle"], "worst": task["items"][-1]["handle"]}
        else:
            body = {"grammar": 3, "creativity": 3, "consistency": 3, "plot": 3}
        answer = person.client.post(f"/api/v1/tasks/{assignment}/{'bws' if task['kind'] == 'bws' else 'rating'}",
                                    headers=person.headers, json={**body, "idempotency_key": f"{person.name}-assignment-{assignment}"})
        assert answer.status_code == 200 and answer.json()["counted"], answer.text
        person.received.append(answer.text)
    assert response.status_code == 204, response.text


# ---------------------------------------------------------------- the set-up


def seed_versions_in_order(database) -> dict[int, tuple[int, int]]:
    """PROMPTS prompts with one continuation per version, created prompt by prompt, version by version
    (as the demo imports them). Returns (version index, prompt index) by continuation id."""
    owner = {}
    with database.write() as db:
        versions = [ModelVersion(name=f"writer-{v}", kind="source", algorithm="import") for v in range(VERSIONS)]
        db.add_all(versions)
        db.flush()
        next_id = FIRST_ID
        for p in range(PROMPTS):
            prompt = Prompt(text=f"The keeper of lighthouse {chr(65 + p % 26)} found a letter.")
            db.add(prompt)
            db.flush()
            for v, version in enumerate(versions):
                # The same words in every story, shuffled at random: the text tells nothing either.
                words = ["the", "sea", "was", "calm", "and", "she", "read", "it", "twice"]
                random.Random(f"{p}-{v}").shuffle(words)
                db.add(Continuation(id=next_id, prompt_id=prompt.id, model_version_id=version.id,
                                    text=" ".join(words) + "."))
                owner[next_id] = (v, p)
                next_id += 1
        db.flush()
    return owner


@pytest.fixture
def judged(app, database):
    """Two annotators and two evaluators have done every task they were given."""
    owner = seed_versions_in_order(database)
    by_version = {v: sorted(c for c, (cv, _) in owner.items() if cv == v) for v in range(VERSIONS)}
    with database.write() as db:
        by_prompt = tasks.continuations_by_prompt(db)
        tasks.build_bws_batch(db, "tuples", by_prompt, seed=0, required=2)  # C(4, 4): one tuple per prompt
        # Oldest and newest, in id order (as an admin would pick them): served in an order of its own.
        tasks.build_rating_batch(db, "ratings", sorted(by_version[OLDEST] + by_version[NEWEST]), required=3)
        version_ids = list(db.scalars(select(ModelVersion.id).order_by(ModelVersion.id)))
        campaign = evaluation.create_campaign(db, evaluation.CampaignCreate(
            model_version_ids=[version_ids[OLDEST], version_ids[NEWEST]],
            prompt_ids=sorted(by_prompt), required=2))
        assert campaign.status == "open"

    people = []
    for name, role in (("ann1", "annotator"), ("ann2", "annotator"), ("eve1", "evaluator"), ("eve2", "evaluator")):
        make_user(database, name, role)
        client = TestClient(app)
        login(client, name)
        people.append(Person(name, role, client, token_headers(client, name)))
    ann1, ann2, eve1, eve2 = people
    work_through(ann1)  # the annotate queue: tuples and ratings together
    work_through(ann2, "bws")
    work_through(eve1)  # the evaluate queue: ratings and evaluation items
    work_through(eve2)
    with database.read() as db:
        item_order = dict(db.execute(select(Assignment.id, Assignment.item_order)).all())
    yield owner, people, item_order
    for person in people:
        person.client.close()


# ---------------------------------------------------------------- predictors


@dataclass
class Tally:
    right: dict[str, int] = field(default_factory=dict)
    trials: dict[str, int] = field(default_factory=dict)

    def guess(self, older: dict[str, object], newer: dict[str, object]) -> None:
        """Each predictor guesses that the observation with the smaller value is the older version."""
        for name in older.keys() & newer.keys():
            a, b = older[name], newer[name]
            if type(a) is not type(b):
                a, b = str(a), str(b)
            if a == b:
                continue  # it cannot tell these two apart at all
            self.trials[name] = self.trials.get(name, 0) + 1
            self.right[name] = self.right.get(name, 0) + (a < b)

    def tested(self) -> dict[str, tuple[int, int]]:
        return {n: (self.right[n], t) for n, t in self.trials.items() if t >= MIN_TRIALS}


def _bws_observations(person: Person, item_order) -> list[list[tuple[int, dict]]]:
    """For each BWS task: (continuation id, what the person could order that item by) per item."""
    seen = []
    for task, html in (t for t in person.tasks if t[0]["kind"] == "bws"):
        order = item_order[task["assignment_id"]]
        handles = [item["handle"] for item in task["items"]]
        assert handles == [HANDLES.handle(task["assignment_id"], c) for c in order]  # shown as stored
        cards = attributes_of(html).items
        assert [card["input[value]"] for card in cards] == handles  # the page shows the same items
        seen.append([(c, {**features({f"json item {k}": v for k, v in item.items()}),
                          **features({f"page item {k}": v for k, v in card.items()}), "position": i})
                     for i, (c, item, card) in enumerate(zip(order, task["items"], cards, strict=True))])
    return seen


def _single_item_observations(person: Person, item_order) -> list[tuple[str, int, dict]]:
    """For each rating or evaluation task: (kind, continuation id, what the person could order it by)."""
    seen = []
    for arrival, (task, html) in enumerate(person.tasks):
        if task["kind"] == "bws":
            continue
        [continuation] = item_order[task["assignment_id"]]
        values = {"arrival": arrival, **{f"json {k}": v for k, v in task.items() if k != "items"},
                  **{f"json item {k}": v for k, v in task["items"][0].items()},
                  **{f"page {k}": v for k, v in attributes_of(html).page.items()}}
        seen.append((task["kind"], continuation, features(values)))
    return seen


def _check_no_continuation_id_reached_them(owner, people, database) -> None:
    leaked = re.compile(r"(?<![0-9A-Za-z])(" + "|".join(map(str, owner)) + r")(?![0-9A-Za-z])")
    for person in people:
        assert person.tasks, f"{person.name} got no tasks"
        for body in person.received:
            assert not leaked.search(body), f"{person.name} received a continuation id: {leaked.search(body)[0]}"
        for task, _ in person.tasks:
            assert set(task) == {"assignment_id", "kind", "prompt", "items", "expires_at"}
            assert all(set(item) == {"handle", "text"} for item in task["items"])
    # Everything was judged, and the judgements are stored with continuation ids (admins are not blind).
    with database.read() as db:
        judgements = db.scalars(select(BwsJudgement)).all()
        assert len(judgements) == 2 * PROMPTS
        assert all((j.best_id, j.worst_id) == (j.shown_order[0], j.shown_order[-1]) for j in judgements)
        # the rating batch (oldest and newest of each prompt) by three people, the campaign's items by two
        assert db.scalar(select(func.count()).select_from(Rating)) == 3 * 2 * PROMPTS + 2 * 2 * PROMPTS


def test_nothing_they_receive_tells_the_versions_apart(judged, database):
    owner, people, item_order = judged
    _check_no_continuation_id_reached_them(owner, people, database)
    version = {c: v for c, (v, _) in owner.items()}
    by_ids, by_what_they_see = Tally(), Tally()

    # BWS: in each tuple, the oldest version's item against the newest one's.
    for person in people:
        for items in _bws_observations(person, item_order):
            [older] = [seen for c, seen in items if version[c] == OLDEST]
            [newer] = [seen for c, seen in items if version[c] == NEWEST]
            by_what_they_see.guess({f"bws {k}": v for k, v in older.items()}, {f"bws {k}": v for k, v in newer.items()})
            [older_id] = [c for c, _ in items if version[c] == OLDEST]
            [newer_id] = [c for c, _ in items if version[c] == NEWEST]
            by_ids.guess({"bws id": older_id}, {"bws id": newer_id})

    # Rating and evaluation items: per person, kind and prompt, the oldest version's item against the newest one's.
    for person in people:
        pairs: dict[tuple[str, int], dict[int, tuple[int, dict]]] = {}
        for kind, continuation, seen in _single_item_observations(person, item_order):
            v, p = owner[continuation]
            pairs.setdefault((kind, p), {})[v] = (continuation, seen)
        for (kind, _), both in pairs.items():
            (older_id, older), (newer_id, newer) = both[OLDEST], both[NEWEST]
            group = f"{person.role} {kind}"
            by_what_they_see.guess({f"{group} {k}": v for k, v in older.items()}, {f"{group} {k}": v for k, v in newer.items()})
            by_ids.guess({f"{group} id": older_id}, {f"{group} id": newer_id})

    tested = by_what_they_see.tested()
    # The predictors that mattered are all there, with enough trials (a missing one would pass unseen).
    for name in ("bws position", "bws json item handle", "bws json item handle (as a base64 number)",
                 "bws page item input[value]", "bws page item article[data-n]",
                 "annotator rating arrival", "annotator rating json assignment_id", "annotator rating json item handle",
                 "evaluator rating arrival", "evaluator eval arrival", "evaluator eval json assignment_id",
                 "evaluator eval json item handle", "evaluator eval page form[action]"):
        assert any(tried.startswith(name) for tried in tested), f"{name} was not tried: {sorted(tested)}"
    leaks = {name: f"{right}/{trials}" for name, (right, trials) in tested.items() if not chance_passes(right, trials)}
    assert not leaks, f"these tell the versions apart better than chance: {leaks}"

    # The same test finds the stored ids out: the lower id is the older version, every time.
    on_ids = by_ids.tested()
    assert set(on_ids) == {"bws id", "annotator rating id", "evaluator rating id", "evaluator eval id"}
    assert all(right == trials and not chance_passes(right, trials) for right, trials in on_ids.values())
    # ... and, as in the demo, (id - first) % versions names the writer.
    assert all((c - FIRST_ID) % VERSIONS == v for c, (v, _) in owner.items())


def test_a_handle_works_only_in_its_own_assignment(client, database):
    seed_versions_in_order(database)
    with database.write() as db:  # one tuple per prompt, two annotators each
        tasks.build_bws_batch(db, "tuples", tasks.continuations_by_prompt(db), seed=0, required=2)
    for name in ("ann1", "ann2"):
        make_user(database, name)
    one, two = token_headers(client, "ann1"), token_headers(client, "ann2")
    mine = client.post("/api/v1/tasks/next", headers=one).json()
    # Least filled first: the second annotator skips through the other tuples to this one.
    while (theirs := client.post("/api/v1/tasks/next", headers=two).json())["prompt"] != mine["prompt"]:
        client.post(f"/api/v1/tasks/{theirs['assignment_id']}/skip", headers=two, json={})
    with database.read() as db:
        same_items = set(db.get(Assignment, mine["assignment_id"]).item_order)
        assert set(db.get(Assignment, theirs["assignment_id"]).item_order) == same_items
    # The same stories, under other handles: nothing links the two assignments.
    assert not {i["handle"] for i in mine["items"]} & {i["handle"] for i in theirs["items"]}

    def refused(body, field_name):
        response = client.post(f"/api/v1/tasks/{theirs['assignment_id']}/bws", headers=two,
                               json={**body, "idempotency_key": "a-fresh-key-" + field_name})
        assert response.status_code == 422, response.text
        assert field_name in response.json()["detail"]
        assert ["body", field_name] in [e["loc"] for e in response.json()["errors"]]

    own = [i["handle"] for i in theirs["items"]]
    refused({"best": mine["items"][0]["handle"], "worst": own[1]}, "best")  # a handle of another assignment
    refused({"best": own[0], "worst": mine["items"][1]["handle"]}, "worst")
    refused({"best": own[0], "worst": "31400001"}, "worst")  # a continuation id is no handle either
    refused({"best": own[0], "worst": own[0]}, "worst")
    with database.read() as db:  # nothing stored, the lease still open
        assert db.scalar(select(func.count()).select_from(BwsJudgement)) == 0
        assert db.get(Assignment, theirs["assignment_id"]).status == "active"
    ok = client.post(f"/api/v1/tasks/{theirs['assignment_id']}/bws", headers=two,
                     json={"best": own[2], "worst": own[0], "idempotency_key": "the-right-one"})
    assert ok.status_code == 200 and ok.json()["counted"]
    with database.read() as db:
        order = db.get(Assignment, theirs["assignment_id"]).item_order
        judgement = db.scalar(select(BwsJudgement))
        assert (judgement.best_id, judgement.worst_id) == (order[2], order[0])



def test_handles_are_the_same_in_every_worker_and_unknown_without_the_secret():
    one, other_worker = ItemHandles.from_secret("s" * 40), ItemHandles.from_secret("s" * 40)
    handle = one.handle(7, FIRST_ID)
    assert re.fullmatch(r"[A-Za-z0-9_-]{16}", handle) and str(FIRST_ID) not in handle
    assert other_worker.handle(7, FIRST_ID) == handle  # workers share the secret key, so any may answer
    assert ItemHandles.from_secret("t" * 40).handle(7, FIRST_ID) != handle
    assert one.handle(8, FIRST_ID) != handle and one.handle(7, FIRST_ID + 1) != handle
    assert one.continuations_by_handle(7, [FIRST_ID, FIRST_ID + 1]) == {handle: FIRST_ID, one.handle(7, FIRST_ID + 1): FIRST_ID + 1}
