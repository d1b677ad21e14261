"""The README's API examples run as written: its `curl` blocks are taken from README.md, run in bash
against a live server on a freshly seeded demo, and every answer must be the one shown under its
command (`# {...}` lines; "..." stands for anything, a `handle` for any handle)."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.demo import seed_demo
from tests.live_server import LiveServer

README = Path(__file__).parents[1] / "README.md"
ADMIN_PASSWORD = "readme admin password"


def api_blocks() -> list[str]:
    """The shell blocks of the README's API section (up to the trainer's section)."""
    text = README.read_text()
    section = text[text.index("## The API"):text.index("## The trainer")]
    return re.findall(r"^```sh\n(.*?)^```", section, re.MULTILINE | re.DOTALL)


def shown_answers(block: str) -> list[str]:
    """The answers a block shows: a `# {` or `# [` line and the `#  ` lines that continue it."""
    answers = []
    for line in block.splitlines():
        if re.match(r"# [\[{]", line):
            answers.append(line[2:])
        elif line.startswith("#  ") and answers:
            answers[-1] += line[2:]
    return answers


def _as_json(shown: str):
    """A shown answer as JSON: a trailing ", ..." in an object or a list only says that more follows."""
    return json.loads(re.sub(r",\s*\.\.\.(?=\s*[\]}])", "", shown))


def matches(shown, actual, key: str = "") -> bool:
    if shown == "...":
        return True
    if key == "handle":
        return isinstance(actual, str) and re.fullmatch(r"[A-Za-z0-9_-]{16}", actual) is not None
    if isinstance(shown, dict):
        return isinstance(actual, dict) and all(k in actual and matches(v, actual[k], k) for k, v in shown.items())
    if isinstance(shown, list):  # the first items shown; more may follow
        return isinstance(actual, list) and len(actual) >= len(shown) and all(
            matches(s, a, key) for s, a in zip(shown, actual))
    return type(shown) is type(actual) and shown == actual


def test_matching_rules_can_fail():
    assert matches(_as_json('{"a": 1, "b": [{"handle": "Xq3v0c9LwJ2mT_8a"}, ...], ...}'),
                   {"a": 1, "b": [{"handle": "b7Yk-2dQe0NfRr4s"}, {}], "c": 2})
    assert not matches(_as_json('{"a": 1}'), {"a": 2})
    assert not matches(_as_json('{"a": true}'), {"a": 1})
    assert not matches(_as_json('{"a": 1, "b": 2}'), {"a": 1})
    assert not matches(_as_json('[{"a": 1}, {"a": 2}]'), [{"a": 1}])
    assert not matches(_as_json('{"handle": "..."}') | {"x": None}, {"handle": "h"})


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the examples, not the database
def test_readme_api_examples_run_as_written(database, settings):
    missing = [tool for tool in ("bash", "curl", "jq") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the README's examples need {', '.join(missing)}")
        pytest.skip(f"{', '.join(missing)} not installed")
    blocks = api_blocks()
    assert len(blocks) == 2 and "auth/token" in blocks[0] and "PATCH" in blocks[1]
    info = seed_demo(database, settings, admin_password=ADMIN_PASSWORD)
    from app.main import create_app

    with LiveServer(create_app(settings, database)) as server:
        script = "\n".join(blocks)
        assert script.count("SERVER=http://127.0.0.1:8000") == 1
        script = (script.replace("SERVER=http://127.0.0.1:8000", f"SERVER={server.url}")
                  .replace("<admin password>", ADMIN_PASSWORD).replace("<password>", info.accounts["annotator1"]))
        # --fail-with-body: an error status stops the script; the echo ends each answer's line
        # (curl prints none), as a terminal would show it.
        prelude = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; echo; }\n'
        run = subprocess.run(["bash", "-c", prelude + script], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, (run.stdout, run.stderr)

        answers = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
        shown = [answer for block in blocks for answer in shown_answers(block)]
        assert len(answers) == len(shown) == 6, run.stdout
        for expected, actual in zip(shown, answers):
            assert matches(_as_json(expected), actual), (expected, actual)

        # The README says a form body gets a 422 that says to send JSON.
        import httpx

        form = httpx.post(f"{server.url}/api/v1/auth/token", data={"username": "annotator1", "password": "x"})
        assert form.status_code == 422 and "send the body as JSON" in form.json()["errors"][0]["msg"]
