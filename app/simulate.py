"""Synthetic annotators that judge through the HTTP API, for demos, campaign dry runs and load tests.

Each simulated annotator scores every continuation with the chosen preference plus Gaussian noise and
marks the highest best and the lowest worst; rating tasks get scores from the same preference.
Preferences: longer, shorter, random, word:<w>, or a weighted mix of text features
(``mix:dialogue=1,ends=0.5,repetition=-1``).
"""

import random
import re
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from pydantic import BaseModel


class SimulationConfig(BaseModel):
    annotators: int = 5
    judgements: int = 100  # stop after this many acknowledged judgements in all
    preference: str = "longer"  # longer | shorter | random | word:<w> | mix:<feature>=<weight>,... (preference_score)
    noise: float = 0.1  # std of the Gaussian noise added to each item's preference score
    seed: int = 0
    username_prefix: str = "sim"


class SimulationResult(BaseModel):
    annotators: int
    judgements: int
    ratings: int
    nothing_left: bool


SENTENCE_END = re.compile(r"""[.!?]['"\u2019\u201d)]*$""")


def _feature(name: str) -> Callable[[str], float]:
    """One text feature in [0, 1] (or about), for the `mix:` preferences."""
    if name == "length":  # longer is better, 50 words = 1
        return lambda text: len(text.split()) / 50
    if name == "ends":  # the story ends on a finished sentence
        return lambda text: 1.0 if SENTENCE_END.search(text.strip()) else 0.0
    if name == "dialogue":  # someone speaks
        return lambda text: 1.0 if re.search(r"[\"\u201c\u201d]", text) else 0.0
    if name == "sentences":  # complete sentences, 3 or more = 1
        return lambda text: min(len(re.findall(r"[.!?](?:\s|$)", text)), 3) / 3
    if name == "repetition":  # share of repeated word bigrams (give it a negative weight)
        def repetition(text: str) -> float:
            words = text.lower().split()
            grams = list(zip(words, words[1:]))
            return 1 - len(set(grams)) / len(grams) if grams else 0.0
        return repetition
    if name.startswith("word:"):
        word = re.compile(rf"\b{re.escape(name[5:])}\b", re.IGNORECASE)
        return lambda text: 1.0 if word.search(text) else 0.0
    raise ValueError(f"unknown feature {name!r}: use length, ends, dialogue, sentences, repetition or word:<w>")


def preference_score(preference: str) -> Callable[[str], float]:
    """longer | shorter | random | word:<w> | mix:<feature>=<weight>,... (a weighted sum of features,
    e.g. ``mix:dialogue=1,ends=0.5,repetition=-1``; features in `_feature`)."""
    if preference == "longer":
        return lambda text: len(text.split()) / 50
    if preference == "shorter":
        return lambda text: -len(text.split()) / 50
    if preference == "random":
        return lambda text: 0.0
    if preference.startswith("word:"):
        return _feature(preference)
    if preference.startswith("mix:"):
        terms = []
        for term in preference[4:].split(","):
            name, _, weight = term.rpartition("=")
            try:
                terms.append((_feature(name.strip()), float(weight)))
            except ValueError as exc:
                raise ValueError(f"bad mix term {term!r}: {exc}") from None
        return lambda text: sum(w * f(text) for f, w in terms)
    raise ValueError(f"unknown preference {preference!r}: use longer, shorter, random, word:<w> or mix:<f>=<w>,...")


def _login(client: httpx.Client, username: str, password: str, issued: list[tuple[dict, int]]) -> dict[str, str]:
    """A short-lived bearer token, noted in `issued` so that the run revokes it when done (each run
    logs in afresh, and an account holds only settings.tokens_per_user live tokens)."""
    response = client.post("/api/v1/auth/token", json={"username": username, "password": password,
                                                       "name": "storyloop simulate", "expires_in_days": 1})
    response.raise_for_status()
    headers = {"Authorization": f"Bearer {response.json()['access_token']}"}
    issued.append((headers, response.json()["id"]))
    return headers


def _revoke(client: httpx.Client, issued: list[tuple[dict, int]]) -> None:
    for headers, token_id in issued:
        client.delete(f"/api/v1/me/tokens/{token_id}", headers=headers)


def _ensure_annotators(client: httpx.Client, admin_headers: dict, config: SimulationConfig,
                       issued: list[tuple[dict, int]]) -> list[dict[str, str]]:
    headers = []
    for i in range(config.annotators):
        username = f"{config.username_prefix}{i + 1}"
        password = f"simulated-{config.seed}-{username}"
        created = client.post("/api/v1/admin/users", headers=admin_headers,
                              json={"username": username, "password": password, "role": "annotator"})
        if created.status_code not in (200, 201, 409):
            created.raise_for_status()
        headers.append(_login(client, username, password, issued))
    return headers


def _annotate(client: httpx.Client, headers: dict, config: SimulationConfig, rng: random.Random,
              budget: Callable[[], bool]) -> tuple[int, int, bool]:
    score = preference_score(config.preference)
    bws = ratings = 0
    while budget():
        response = client.post("/api/v1/tasks/next", headers=headers)
        if response.status_code == 204:
            return bws, ratings, True
        response.raise_for_status()
        task = response.json()
        noisy = {item["handle"]: score(item["text"]) + rng.gauss(0, config.noise) for item in task["items"]}
        key = uuid.uuid4().hex
        if task["kind"] == "bws":
            ranked = sorted(noisy, key=noisy.get)
            body = {"best": ranked[-1], "worst": ranked[0], "idempotency_key": key,
                    "duration_ms": rng.randint(3000, 30000)}
            client.post(f"/api/v1/tasks/{task['assignment_id']}/bws", headers=headers, json=body).raise_for_status()
            bws += 1
        else:
            value = min(5, max(1, round(3 + 2 * next(iter(noisy.values())))))
            body = {dim: value for dim in ("grammar", "creativity", "consistency", "plot")}
            client.post(f"/api/v1/tasks/{task['assignment_id']}/rating", headers=headers,
                        json={**body, "idempotency_key": key, "duration_ms": rng.randint(3000, 30000)}).raise_for_status()
            ratings += 1
    return bws, ratings, False


def run_simulation(url: str, admin: str, admin_password: str, config: SimulationConfig,
                   client: httpx.Client | None = None) -> SimulationResult:
    """Drives the API at `url` (or through `client`, e.g. a FastAPI TestClient) until `judgements` are in."""
    client = client or httpx.Client(base_url=url, timeout=30)
    issued: list[tuple[dict, int]] = []
    try:
        admin_headers = _login(client, admin, admin_password, issued)
        return _simulate(client, config, _ensure_annotators(client, admin_headers, config, issued))
    finally:
        _revoke(client, issued)


def _simulate(client: httpx.Client, config: SimulationConfig, annotator_headers: list[dict[str, str]]) -> SimulationResult:
    remaining, lock = [config.judgements], threading.Lock()

    def take_one() -> bool:  # the shared budget of judgements
        with lock:
            if remaining[0] <= 0:
                return False
            remaining[0] -= 1
            return True

    with ThreadPoolExecutor(max_workers=config.annotators) as pool:
        results = list(pool.map(
            lambda i: _annotate(client, annotator_headers[i], config, random.Random(config.seed * 1000 + i), take_one),
            range(config.annotators),
        ))
    return SimulationResult(annotators=config.annotators, judgements=sum(r[0] for r in results),
                            ratings=sum(r[1] for r in results),
                            nothing_left=any(r[2] for r in results))
