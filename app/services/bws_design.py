"""Balanced Best-Worst Scaling (BWS) designs: which k-tuples of items to show annotators.

A design for the N continuations of ONE prompt is a list of k-tuples such that
  1. no item appears twice in a tuple,
  2. every item appears about equally often,
  3. every pair of items co-occurs about equally often.

The generator follows Kiritchenko & Mohammad (2016, 2017): many random attempts, each built by
dealing items from shuffled lists, and the attempt with the most even pair co-occurrence wins.
We then add one step of our own: a seeded local search that swaps items between tuples while it
makes pair co-occurrence more even (appearance counts are untouched by swaps). For N = 12 it
roughly halves the pair std of the best K&M attempt.
Pure Python + numpy; no database or web imports.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Sequence

import numpy as np

ItemTuple = tuple[int, ...]

# Above this many possible k-subsets we sample replacement candidates instead of enumerating them.
_MAX_ENUMERATED_COMBINATIONS = 50_000


def design_tuples(
    item_ids: Sequence[int],
    k: int = 4,
    factor: float = 2.0,
    seed: int = 0,
    attempts: int = 100,
) -> list[ItemTuple]:
    """Return a balanced BWS design for the items of one prompt.

    The design has round(factor * N) tuples, capped at C(N, k) (the number of distinct k-subsets).
    Each tuple is a sorted tuple of item ids; the list order is the generation order, which is
    fully determined by `seed` and the *set* of item ids (input order does not matter).
    No two tuples hold the same set of items (the cap makes that always possible).
    """
    items = sorted(item_ids)
    n = len(items)
    if k < 2:
        raise ValueError(f"k must be at least 2 (got k={k})")
    if len(set(items)) != n:
        raise ValueError("item_ids contains duplicates")
    if n < k:
        raise ValueError(f"need at least k={k} items to build {k}-tuples, got {n}")
    if factor <= 0:
        raise ValueError(f"factor must be positive (got {factor})")
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1 (got {attempts})")

    rng = random.Random(seed)
    n_possible = math.comb(n, k)
    n_tuples = min(max(1, round(factor * n)), n_possible)

    # Asking for every possible k-subset: the complete design is perfectly balanced by symmetry.
    if n_tuples == n_possible:
        everything = list(itertools.combinations(items, k))
        rng.shuffle(everything)
        return everything

    best: list[ItemTuple] | None = None
    best_key: tuple[int, int, float] | None = None
    for _ in range(attempts):
        candidate = _one_attempt(items, k, n_tuples, rng)
        # K&M rank attempts by pair std alone; we put two hard constraints first: no duplicate
        # tuples, then appearance counts as even as possible (max - min).
        key = (
            _count_duplicates(candidate),
            _appearance_range(candidate, items),
            _pair_std(candidate, items),
        )
        if best_key is None or key < best_key:
            best, best_key = candidate, key
    assert best is not None and best_key is not None
    if best_key[0] > 0:
        best = _replace_duplicates(best, items, k, rng)
    best = _even_out_appearances(best, items)
    return _improve_pair_balance(best, items, rng)


def _one_attempt(items: list[int], k: int, n_tuples: int, rng: random.Random) -> list[ItemTuple]:
    """Deal items from shuffled lists into k-tuples (one attempt of the K&M generator).

    The pool is a shuffled copy of the items; when it runs out, a fresh shuffle is appended.
    An item that cannot go into the current tuple (already in it, or it would complete a tuple
    we already have) is skipped and stays in the pool, so it is used in the next tuple instead;
    this is K&M's "move it further back" rule and keeps appearance counts within about one.
    """
    pool: list[int] = []
    used_sets: set[frozenset[int]] = set()
    tuples: list[ItemTuple] = []

    def refill() -> None:
        fresh = items[:]
        rng.shuffle(fresh)
        pool.extend(fresh)

    while len(tuples) < n_tuples:
        current: list[int] = []
        while len(current) < k:
            is_last = len(current) == k - 1
            picked = _take_acceptable(pool, current, is_last, used_sets)
            if picked is None:
                refill()
                picked = _take_acceptable(pool, current, is_last, used_sets)
            if picked is None:
                # Every completion of `current` is already used: accept a duplicate here and let
                # the attempt scoring / repair step deal with it (only happens for tiny N).
                picked = _take_acceptable(pool, current, False, used_sets)
            assert picked is not None  # the pool holds every item at least once after refill
            current.append(picked)
        used_sets.add(frozenset(current))
        tuples.append(tuple(sorted(current)))
    return tuples


def _take_acceptable(
    pool: list[int], current: list[int], is_last: bool, used_sets: set[frozenset[int]]
) -> int | None:
    """Remove and return the first pool item that may join `current`, or None if there is none."""
    for index, item in enumerate(pool):
        if item in current:
            continue
        if is_last and frozenset([*current, item]) in used_sets:
            continue
        return pool.pop(index)
    return None


def _appearance_range(tuples: Sequence[ItemTuple], items: Sequence[int]) -> int:
    counts = Counter(item for t in tuples for item in t)
    values = [counts[item] for item in items]
    return max(values) - min(values)


def _even_out_appearances(tuples: list[ItemTuple], items: list[int]) -> list[ItemTuple]:
    """Replace the most shown item by the least shown one until counts differ by at most one.

    Dealing can end mid-pass with one item a copy behind and another a copy ahead (max - min = 2).
    If the most shown item `hi` appears at least twice more than `lo`, at least two tuples hold
    `hi` but not `lo`; we swap `lo` in for `hi` in the first one that does not repeat a tuple.
    """
    result = list(tuples)
    counts = Counter(item for t in result for item in t)
    used = {frozenset(t) for t in result}
    while True:
        hi = max(items, key=lambda i: (counts[i], -i))
        lo = min(items, key=lambda i: (counts[i], i))
        if counts[hi] - counts[lo] <= 1:
            return result
        for position, t in enumerate(result):
            if hi not in t or lo in t:
                continue
            replaced = frozenset(t) - {hi} | {lo}
            if replaced in used:
                continue
            used.discard(frozenset(t))
            used.add(replaced)
            result[position] = tuple(sorted(replaced))
            counts[hi] -= 1
            counts[lo] += 1
            break
        else:
            return result  # no swap avoids a repeated tuple (tiny, dense designs): keep as is


def _improve_pair_balance(
    tuples: list[ItemTuple], items: list[int], rng: random.Random, proposals_per_slot: int = 30
) -> list[ItemTuple]:
    """Refine a design by swapping items between tuples when that evens out pair co-occurrence.

    An extra step after K&M's best-of-attempts: random attempts leave some pairs together 4-5
    times and others never, even when a more even design exists. A swap moves item x from tuple
    A to tuple B and item y from B to A, so every item's appearance count is unchanged. The total
    of all pair counts is fixed, so lowering the sum of squared pair counts lowers their std; we
    accept a swap only when it strictly lowers that sum and creates no repeated tuple.
    """
    index = {item: i for i, item in enumerate(items)}
    design = [[index[item] for item in t] for t in tuples]
    counts = _pair_matrix(tuples, items)
    sets = {frozenset(t) for t in design}
    n_tuples, k = len(design), len(design[0])
    if n_tuples < 2 or len(sets) < n_tuples:
        return tuples  # nothing to swap, or duplicates we must not multiply

    for _ in range(proposals_per_slot * n_tuples * k):
        a, b = rng.randrange(n_tuples), rng.randrange(n_tuples)
        if a == b:
            continue
        pos_x, pos_y = rng.randrange(k), rng.randrange(k)
        x, y = design[a][pos_x], design[b][pos_y]
        if x in design[b] or y in design[a]:
            continue
        rest_a = [i for i in design[a] if i != x]
        rest_b = [i for i in design[b] if i != y]
        new_a, new_b = frozenset([*rest_a, y]), frozenset([*rest_b, x])
        if new_a in sets or new_b in sets or new_a == new_b:
            continue
        # Net change per pair; a pair can be touched twice when A and B share items.
        change: Counter[tuple[int, int]] = Counter()
        for i in rest_a:
            change[_ordered(x, i)] -= 1
            change[_ordered(y, i)] += 1
        for i in rest_b:
            change[_ordered(y, i)] -= 1
            change[_ordered(x, i)] += 1
        delta = sum((counts[p] + d) ** 2 - counts[p] ** 2 for p, d in change.items())
        if delta >= 0:
            continue
        for (i, j), d in change.items():
            counts[i, j] += d
            counts[j, i] += d
        sets.discard(frozenset(design[a]))
        sets.discard(frozenset(design[b]))
        design[a][pos_x], design[b][pos_y] = y, x
        sets.update((new_a, new_b))
    return [tuple(sorted(items[i] for i in t)) for t in design]


def _ordered(i: int, j: int) -> tuple[int, int]:
    return (i, j) if i < j else (j, i)


def _count_duplicates(tuples: list[ItemTuple]) -> int:
    """Number of tuples that repeat an earlier tuple's item set."""
    return len(tuples) - len({frozenset(t) for t in tuples})


def _pair_matrix(tuples: Sequence[ItemTuple], items: Sequence[int]) -> np.ndarray:
    """Symmetric N x N matrix of how often each pair of items shares a tuple."""
    index = {item: i for i, item in enumerate(items)}
    counts = np.zeros((len(items), len(items)), dtype=np.int64)
    for t in tuples:
        idx = [index[item] for item in t]
        for a, b in itertools.combinations(idx, 2):
            counts[a, b] += 1
            counts[b, a] += 1
    return counts


def _upper_pairs(matrix: np.ndarray) -> np.ndarray:
    """The N(N-1)/2 pair counts above the diagonal (zeros included)."""
    return matrix[np.triu_indices(matrix.shape[0], k=1)]


def _pair_std(tuples: Sequence[ItemTuple], items: Sequence[int]) -> float:
    pairs = _upper_pairs(_pair_matrix(tuples, items))
    return float(pairs.std()) if pairs.size else 0.0


def _replace_duplicates(
    tuples: list[ItemTuple], items: list[int], k: int, rng: random.Random
) -> list[ItemTuple]:
    """Swap each repeated tuple for an unused k-subset that hurts balance least.

    Cost of a candidate = (sum of its items' appearance counts, sum of its pairs' co-occurrence
    counts), both computed without the tuple being replaced: lowest first.
    """
    result = list(tuples)
    seen: set[frozenset[int]] = set()
    appearances = Counter(item for t in result for item in t)
    pairs = Counter(p for t in result for p in itertools.combinations(t, 2))
    for position, t in enumerate(result):
        if frozenset(t) not in seen:
            seen.add(frozenset(t))
            continue
        appearances.subtract(t)
        pairs.subtract(itertools.combinations(t, 2))
        used = {frozenset(u) for u in result}

        def cost(c: ItemTuple) -> tuple[int, int]:
            return (
                sum(appearances[i] for i in c),
                sum(pairs[p] for p in itertools.combinations(c, 2)),
            )

        if math.comb(len(items), k) <= _MAX_ENUMERATED_COMBINATIONS:
            candidates = [c for c in itertools.combinations(items, k) if frozenset(c) not in used]
        else:
            # Huge space, so a few hundred random draws find unused subsets easily.
            draws = (tuple(sorted(rng.sample(items, k))) for _ in range(500))
            candidates = [c for c in draws if frozenset(c) not in used]
        replacement = min(candidates, key=cost) if candidates else t
        result[position] = replacement
        seen.add(frozenset(replacement))
        appearances.update(replacement)
        pairs.update(itertools.combinations(replacement, 2))
    return result


def design_stats(tuples: Sequence[Sequence[int]]) -> dict[str, float]:
    """Balance statistics of a design, for admin pages and tests.

    Keys: n_items, n_tuples, duplicate_tuples, appearance_min/max/std (how often each item is
    shown) and pair_min/max/std (how often each pair of items shares a tuple, over all
    N(N-1)/2 pairs of the items present, zeros included). Standard deviations are population
    (ddof=0) values.
    """
    normalized = [tuple(sorted(t)) for t in tuples]
    items = sorted({item for t in normalized for item in t})
    counts = Counter(item for t in normalized for item in t)
    appearances = np.array([counts[item] for item in items], dtype=float)
    pairs = _upper_pairs(_pair_matrix(normalized, items)).astype(float)

    def summary(prefix: str, values: np.ndarray) -> dict[str, float]:
        if values.size == 0:
            return {f"{prefix}_min": 0.0, f"{prefix}_max": 0.0, f"{prefix}_std": 0.0}
        return {
            f"{prefix}_min": float(values.min()),
            f"{prefix}_max": float(values.max()),
            f"{prefix}_std": float(values.std()),
        }

    return {
        "n_items": len(items),
        "n_tuples": len(normalized),
        "duplicate_tuples": _count_duplicates(normalized),
        **summary("appearance", appearances),
        **summary("pair", pairs),
    }
