"""The documentation's examples run as written.

A fenced block right under the line `<!-- test: runs -->` is an example that must run as it stands:
- the `sh` blocks so marked in docs/api.md are one session with `curl` and `jq`, run in order in one bash
  against a live server on a freshly seeded demo; every answer must be the one shown under its command
  (`# {...}` lines; "..." stands for anything, a `handle` for any handle). The session ends by saving
  the `pairs` export as `storyloop-pairs.jsonl`;
- the `python` blocks so marked in README.md and docs/*.md run, each as a script, in the folder where
  that session left its export, on a CPU only (CUDA hidden) and offline. An example names its model
  `"gpt2"`: the folder holds a tiny GPT-2 saved under that name, which `from_pretrained` takes before
  the hub. Every python block of the documentation must be marked so: an example that trains on or
  loads the exports is worth nothing if it does not run.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.demo import seed_demo
from tests.live_server import LiveServer

ROOT = Path(__file__).parents[1]
API_DOC = ROOT / "docs" / "api.md"
RUNS = "<!-- test: runs -->"
ADMIN_PASSWORD = "readme admin password"


def documentation() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def fenced_blocks(text: str, language: str) -> list[tuple[bool, str]]:
    """(marked to run, code) of each ```language block, in order."""
    pattern = rf"^(?:({re.escape(RUNS)})\n)?```{language}\n(.*?)^```"
    return [(bool(mark), code) for mark, code in re.findall(pattern, text, re.MULTILINE | re.DOTALL)]


def api_blocks() -> list[str]:
    """The shell blocks of docs/api.md marked to run: one session, in order."""
    return [code for marked, code in fenced_blocks(API_DOC.read_text(), "sh") if marked]


def python_examples() -> list[tuple[str, str]]:
    """(file name, code) of every python block of the README and docs/ marked to run."""
    return [(path.name, code) for path in documentation()
            for marked, code in fenced_blocks(path.read_text(), "python") if marked]


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


def test_blocks_are_found_with_and_without_the_mark():
    text = f"intro\n{RUNS}\n```python\nprint(1)\n```\n\n```python\nprint(2)\n```\n```sh\nls\n```\n"
    assert fenced_blocks(text, "python") == [(True, "print(1)\n"), (False, "print(2)\n")]
    assert fenced_blocks(text, "sh") == [(False, "ls\n")]


def test_every_python_example_of_the_documentation_is_marked_to_run():
    unmarked = [path.name for path in documentation()
                for marked, _ in fenced_blocks(path.read_text(), "python") if not marked]
    assert not unmarked, f"python blocks not marked {RUNS}: {unmarked}"
    assert any("RewardTrainer" in code for _, code in python_examples())


def _require_shell_tools():
    missing = [tool for tool in ("bash", "curl", "jq") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the documentation's examples need {', '.join(missing)}")
        pytest.skip(f"{', '.join(missing)} not installed")


def run_api_session(database, settings, folder: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Seeds the demo and runs docs/api.md's session in ``folder`` against a live server; returns the
    run and its blocks. Checks the 422 for a form body that the page promises, while the server is up."""
    blocks = api_blocks()
    assert len(blocks) == 2 and "auth/token" in blocks[0] and "PATCH" in blocks[1] and "exports/pairs" in blocks[1]
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
        run = subprocess.run(["bash", "-c", prelude + script], capture_output=True, text=True, timeout=60,
                             cwd=folder)
        assert run.returncode == 0, (run.stdout, run.stderr)

        # docs/api.md says a form body gets a 422 that says to send JSON.
        import httpx

        form = httpx.post(f"{server.url}/api/v1/auth/token", data={"username": "annotator1", "password": "x"})
        assert form.status_code == 422 and "send the body as JSON" in form.json()["errors"][0]["msg"]
    return run, blocks


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the examples, not the database
def test_api_examples_run_as_written(database, settings, tmp_path):
    _require_shell_tools()
    run, blocks = run_api_session(database, settings, tmp_path)
    answers = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    shown = [answer for block in blocks for answer in shown_answers(block)]
    assert len(answers) == len(shown) == 6, run.stdout
    for expected, actual in zip(shown, answers):
        assert matches(_as_json(expected), actual), (expected, actual)
    # The session's one BWS judgement of a 4-tuple implies 2k - 3 = 5 pairs.
    pairs = [json.loads(line) for line in (tmp_path / "storyloop-pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 5 and all(pair["chosen"] != pair["rejected"] for pair in pairs)


def save_tiny_gpt2(folder: Path, texts: list[str]) -> None:
    """A tiny GPT-2 and its tokenizer, trained on ``texts``, saved where an example's "gpt2" is looked up."""
    from tests.tiny_models import tiny_lm, train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(texts, vocab_size=300)
    model = tiny_lm(tokenizer, n_positions=1024, n_embd=32, n_layer=1)  # room for TRL's default max_length
    model.save_pretrained(folder / "gpt2")
    tokenizer.save_pretrained(folder / "gpt2")


@pytest.mark.slow  # ~30 s: each example imports torch, transformers and TRL afresh
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_python_examples_run_as_written_on_a_cpu(database, settings, tmp_path):
    _require_shell_tools()
    pytest.importorskip("trl")
    examples = python_examples()
    assert examples
    run_api_session(database, settings, tmp_path)
    pairs = [json.loads(line) for line in (tmp_path / "storyloop-pairs.jsonl").read_text().splitlines()]
    save_tiny_gpt2(tmp_path, [p["prompt"] + p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])
    # A CPU machine, offline, with an empty Hugging Face cache: "gpt2" can only be the tiny folder, and
    # nothing may need a GPU.
    env = os.environ | {"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                        "HF_HOME": str(tmp_path / "hf-home"), "TOKENIZERS_PARALLELISM": "false"}
    for number, (source, code) in enumerate(examples):
        script = tmp_path / f"example_{number}.py"
        script.write_text(code)
        run = subprocess.run([sys.executable, script.name], capture_output=True, text=True, timeout=300,
                             cwd=tmp_path, env=env)
        assert run.returncode == 0, (source, code, run.stderr[-3000:])
