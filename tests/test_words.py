"""Words and numbers a new user meets: counted nouns, a crowd participant's one count, the Gold page's
pages of tasks told apart, the step after an import, what a second `storyloop demo` reports, the README's
numbers against the code, and `make test` stopping the PostgreSQL it started."""

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.demo import demo_report, seed_demo
from app.models import Continuation, ModelVersion, Prompt, Task
from app.services import tasks
from app.words import plural
from tests.factories import seed_bws_batch
from tests.conftest import make_user
from tests.test_admin_pages import login as admin_login
from tests.test_admin_pages import post_form, text_of
from tests.test_crowd import join, new_link, next_task, prolific_query
from tests.test_pages_annotate import HTML

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def admin(client, database):
    make_user(database, "root", "admin")
    admin_login(client, "root")
    return client


def test_plural():
    assert [plural(n, "evaluator") for n in (0, 1, 2)] == ["0 evaluators", "1 evaluator", "2 evaluators"]
    assert plural(1, "batch", "batches") == "1 batch" and plural(3, "batch", "batches") == "3 batches"


def test_one_evaluator_and_one_task_read_in_the_singular():
    from app.templating import templates

    rendered = templates.env.from_string('{{ 1 | plural("evaluator") }} · {{ 2 | plural("evaluator") }}').render()
    assert rendered == "1 evaluator · 2 evaluators"
    assert str(tasks.quota_done(1)) == "you have done your quota of 1 task"
    for path in ("templates/admin/campaign.html", "templates/admin/dashboard.html", "templates/crowd/welcome.html"):
        source = (ROOT / path).read_text()
        assert not re.search(r"\{\{ [a-z_.]+ \}\} (evaluators|batches|skips|tasks|minutes)\b", source), path


def test_a_crowd_participant_sees_only_their_quota(client, database, admin_headers):
    link = new_link(client, admin_headers, task_quota=3)
    seed_bws_batch(database, required=3)
    queue = join(client, link["token"], prolific_query())
    text = text_of(queue)
    assert "3 of 3 tasks left" in text and "tasks left for you" not in text
    task_page = next_task(client)
    assert "of 3 tasks left" in text_of(task_page) and "more waiting" not in text_of(task_page)


def test_an_annotator_without_a_quota_still_sees_what_is_waiting(client, database):
    from tests.test_pages_annotate import login

    seed_bws_batch(database, required=3)
    make_user(database, "ann")
    login(client, "ann")
    queue = text_of(client.get("/annotate", headers=HTML))
    assert "tasks left for you" in queue


# ---------------------------------------------------------------- Gold page


def test_gold_page_pages_a_batchs_tasks_and_tells_them_apart(admin, database):
    batch_id = seed_bws_batch(database, prompts=12, per_prompt=10, required=1)
    with database.read() as db:
        total = db.scalar(select(func.count()).select_from(Task).where(Task.batch_id == batch_id))
        first_ids = db.scalars(select(Task.id).where(Task.batch_id == batch_id).order_by(Task.id)).all()
    assert total > 100  # more than one page
    page = admin.get(f"/admin/gold?batch_id={batch_id}")
    text = text_of(page)
    assert f"Tasks 1–100 of {total}, in id order." in text
    assert f'href="/admin/gold?batch_id={batch_id}&amp;offset=100" rel="next">Next {min(100, total - 100)}</a>' in page.text
    rows = re.findall(r"<tr><td class=\"num\">(\d+)</td>.*?</tr>", page.text.split('id="candidates"')[1], re.S)
    assert [int(r) for r in rows] == first_ids[:100]
    # rows of one prompt differ by their continuations (ids and opening words), not only the shortened prompt
    bodies = re.findall(r'<ul class="snippets">(.*?)</ul>', page.text)
    assert len(bodies) == 100 and len(set(bodies)) == 100
    assert re.search(r'<span class="muted">#\d+</span> \S', bodies[0])

    second = admin.get(f"/admin/gold?batch_id={batch_id}&offset=100")
    assert f"Tasks 101–{min(200, total)} of {total}" in text_of(second) and 'rel="prev">Previous 100</a>' in second.text
    assert admin.get(f"/admin/gold?batch_id={batch_id}&offset=-1").status_code == 422


# ---------------------------------------------------------------- import, demo


def test_after_an_import_the_page_says_to_build_a_batch(admin):
    good = b'{"prompt": "A fox", "continuation": " ran.", "source": "gpt2"}\n'
    page = post_form(admin, "/admin/import", "/admin/import", files={"file": ("good.jsonl", good, "application/json")})
    assert "Annotators see the new stories only once a batch holds them: build a batch" in text_of(page)
    assert '<a href="/admin/batches">build a batch</a>' in page.text
    again = post_form(admin, "/admin/import", "/admin/import", files={"file": ("good.jsonl", b'{"prompt": "B"}\n',
                                                                                "application/json")})
    assert "build a batch" not in text_of(again)  # a prompt alone: the trainer writes for it and queues its tuples


def test_a_second_demo_run_reports_what_the_database_holds(database, settings, tmp_path):
    first = seed_demo(database, settings)
    with database.write() as db:  # the trainer wrote stories and queued tuples since
        prompt = db.scalar(select(Prompt).limit(1))
        policy = ModelVersion(name="policy-r1", kind="policy", algorithm="ppo")
        db.add(policy)
        db.flush()
        new = [Continuation(prompt_id=prompt.id, model_version_id=policy.id, text=f" story {i}.") for i in range(4)]
        db.add_all(new)
        db.flush()
        tasks.build_bws_batch(db, "round 1", {prompt.id: [c.id for c in new]}, seed=0, required=1)
        counts = {"prompts": db.scalar(select(func.count()).select_from(Prompt)),
                  "continuations": db.scalar(select(func.count()).select_from(Continuation)),
                  "bws": db.scalar(select(func.count()).select_from(Task).where(Task.kind == "bws"))}
    assert counts["continuations"] == first.continuations + 4 and counts["bws"] > first.bws_tuples
    report = demo_report(seed_demo(database, settings), tmp_path / "accounts.txt")
    assert report.startswith(f"Demo data already present (nothing changed); the database holds {counts['prompts']} prompts, "
                             f"{counts['continuations']} continuations, {counts['bws']} best-worst tuples, "
                             f"{first.rating_tasks} rating tasks.")


# ---------------------------------------------------------------- README numbers


def test_readme_numbers_match_the_code():
    from transformers import GPT2Config, GPT2LMHeadModel

    from trainer.bootstrap import PRESETS
    from trainer.config import GenerationConfig

    texts = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))])
    caps = {int(n) for n in re.findall(r"`max_new_tokens` \((\d+)\)", texts)}
    assert caps == {GenerationConfig().max_new_tokens}, caps
    demo = PRESETS["demo"]
    model = GPT2LMHeadModel(GPT2Config(vocab_size=demo.vocab_size, n_positions=demo.block_size, n_embd=demo.n_embd,
                                       n_layer=demo.n_layer, n_head=demo.n_head))
    millions = f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M"
    stated = set(re.findall(r"`?demo`?\s*\((?:the default: [^)]*?)?(\d\.\dM)", texts)) | \
        set(re.findall(r"`demo` base \((\d\.\dM) parameters", texts))
    assert stated <= {millions}, stated  # (the README was 1.4M in one place, 1.9M in two)


# ---------------------------------------------------------------- make test: PostgreSQL


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize("running_before", [False, True])
def test_make_test_stops_the_postgresql_it_started_and_only_that(tmp_path, running_before):
    """scripts/test.sh with stand-ins for pg_ctlcluster, psql and pytest: it stops the cluster on exit when it
    started it (the tests failing too), and leaves one that was running before alone."""
    repo, bin_dir, log = tmp_path / "repo", tmp_path / "bin", tmp_path / "calls.log"
    (repo / "scripts").mkdir(parents=True)
    (repo / ".venv" / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    for script in ("test.sh", "postgres-for-tests.sh"):
        shutil.copy(ROOT / "scripts" / script, repo / "scripts" / script)
    _stub(repo / ".venv" / "bin", "python", f'echo "pytest $*" >> {log}; exit 3')  # the tests fail
    state = tmp_path / "running"
    if running_before:
        state.touch()
    _stub(bin_dir, "pg_ctlcluster", f'echo "pg_ctlcluster $*" >> {log}\n'
                                    f'case "$3" in status) [ -e {state} ];; start) touch {state};; stop) rm -f {state};; esac')
    for name in ("chromium", "curl", "jq", "pg_isready"):
        _stub(bin_dir, name, "exit 0")
    _stub(bin_dir, "runuser", 'echo 1')  # psql as postgres: the role exists
    _stub(bin_dir, "id", 'echo 1000')  # not root: nothing is installed
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STORYLOOP_PG_CONF_DIR": str(tmp_path / "etc")}
    (tmp_path / "etc" / "16").mkdir(parents=True)
    result = subprocess.run(["bash", "scripts/test.sh"], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    calls = log.read_text().splitlines()
    assert result.returncode == 3, result.stderr  # the tests' exit status is kept
    assert "pytest -m pytest -q" in calls
    if running_before:
        assert "pg_ctlcluster 16 main start" not in calls and "pg_ctlcluster 16 main stop" not in calls
        assert state.exists()
    else:
        assert calls.index("pg_ctlcluster 16 main start") < calls.index("pytest -m pytest -q") \
            < calls.index("pg_ctlcluster 16 main stop")
        assert not state.exists()
