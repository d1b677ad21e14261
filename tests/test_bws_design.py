"""Tests for app.services.bws_design: balanced BWS tuple designs."""

import functools
import itertools
import math
import random

import numpy as np
import pytest

from app.services.bws_design import design_stats, design_tuples


@functools.cache
def default_design(n: int) -> list[tuple[int, ...]]:
    """design_tuples(range(n)) with default settings, built once per n for several tests."""
    return design_tuples(range(n), k=4, factor=2.0)


def naive_design(n: int, k: int, n_tuples: int, seed: int) -> list[tuple[int, ...]]:
    """Potato-style baseline: every tuple sampled uniformly, no balancing at all."""
    rng = random.Random(seed)
    return [tuple(sorted(rng.sample(range(n), k))) for _ in range(n_tuples)]


@pytest.mark.parametrize("n", [12, 20, 40])
def test_tuples_have_k_distinct_sorted_items_and_default_count(n: int) -> None:
    design = default_design(n)
    assert len(design) == 2 * n  # factor 2
    for t in design:
        assert len(t) == 4
        assert len(set(t)) == 4
        assert list(t) == sorted(t)
        assert set(t) <= set(range(n))
    assert design_stats(design)["duplicate_tuples"] == 0


@pytest.mark.parametrize("n", [12, 20, 40])
def test_every_item_appears_equally_often(n: int) -> None:
    # 2N tuples x 4 slots = 8N slots over N items: exactly 8 each (K&M's "about 8 tuples").
    stats = design_stats(default_design(n))
    assert stats["appearance_min"] == stats["appearance_max"] == 8


@pytest.mark.parametrize("n, factor", [(12, 1.5), (20, 1.5), (13, 2.0), (40, 1.7)])
def test_appearance_spread_at_most_one_when_slots_do_not_divide(n: int, factor: float) -> None:
    stats = design_stats(design_tuples(range(n), k=4, factor=factor))
    assert stats["n_tuples"] == round(factor * n)
    assert stats["appearance_max"] - stats["appearance_min"] <= 1


@pytest.mark.parametrize("n", [12, 20, 40])
def test_pair_cooccurrence_more_even_than_random_baseline(n: int) -> None:
    design = default_design(n)
    ours = design_stats(design)["pair_std"]
    baseline = np.mean(
        [design_stats(naive_design(n, 4, len(design), seed))["pair_std"] for seed in range(10)]
    )
    assert ours < baseline
    # Not just marginally: for N = 12, 24 tuples give 144 pair slots over 66 pairs (2.18 each),
    # so a good design keeps every pair between 1 and 3 co-occurrences.
    if n == 12:
        assert ours < 0.6 * baseline
        stats = design_stats(design)
        assert stats["pair_min"] >= 1 and stats["pair_max"] <= 3


def test_same_seed_same_design_and_input_order_irrelevant() -> None:
    ids = [101, 205, 333, 47, 58, 69, 710, 81, 92, 1000]
    first = design_tuples(ids, seed=7)
    assert design_tuples(ids, seed=7) == first
    assert design_tuples(list(reversed(ids)), seed=7) == first


def test_different_seed_different_design() -> None:
    ids = list(range(12))
    assert design_tuples(ids, seed=1) != design_tuples(ids, seed=2)


def test_design_does_not_touch_global_random_state() -> None:
    random.seed(123)
    expected = random.random()
    random.seed(123)
    design_tuples(range(12))
    assert random.random() == expected


@pytest.mark.parametrize(
    "ids, k, message",
    [
        ([1, 2, 3], 4, "at least k=4"),
        ([], 4, "at least k=4"),
        ([1, 2, 3], 1, "k must be at least 2"),
        ([1, 2, 2, 3, 4], 4, "duplicates"),
    ],
)
def test_invalid_input_raises(ids: list[int], k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        design_tuples(ids, k=k)


def test_capped_at_number_of_distinct_tuples_for_five_items() -> None:
    # C(5, 4) = 5 < round(2 * 5) = 10: the design is every 4-subset exactly once, so each item
    # appears 4 times and each pair 3 times (C(3, 2) = 3 ways to fill the other two slots).
    design = design_tuples([1, 2, 3, 4, 5], k=4, factor=2.0)
    assert sorted(design) == list(itertools.combinations([1, 2, 3, 4, 5], 4))
    stats = design_stats(design)
    assert stats["duplicate_tuples"] == 0
    assert stats["appearance_min"] == stats["appearance_max"] == 4
    assert stats["pair_min"] == stats["pair_max"] == 3


def test_exactly_k_items_gives_one_tuple() -> None:
    assert design_tuples([9, 3, 5, 7]) == [(3, 5, 7, 9)]


@pytest.mark.parametrize(
    "n, k, factor, attempts",
    [
        (6, 4, 2.0, 100),  # 12 of the 15 possible 4-subsets
        (6, 3, 3.0, 1),  # 18 of 20 3-subsets; a single attempt usually repeats one (repaired)
        (7, 4, 3.0, 1),  # 21 of 35
    ],
)
def test_dense_small_design_has_no_repeated_tuples(
    n: int, k: int, factor: float, attempts: int
) -> None:
    n_tuples = round(factor * n)
    assert n_tuples < math.comb(n, k)
    for seed in range(10):
        design = design_tuples(range(n), k=k, factor=factor, seed=seed, attempts=attempts)
        stats = design_stats(design)
        assert len(design) == n_tuples
        assert stats["duplicate_tuples"] == 0
        assert stats["appearance_max"] - stats["appearance_min"] <= 1


def test_pairs_design_with_k_2() -> None:
    design = design_tuples(range(10), k=2, factor=2.0)
    stats = design_stats(design)
    assert len(design) == 20
    assert stats["duplicate_tuples"] == 0
    assert stats["appearance_min"] == stats["appearance_max"] == 4  # 40 slots / 10 items


def test_design_stats_hand_computed() -> None:
    # Tuples (1,2,3) and (1,2,4).
    # Appearances: 1->2, 2->2, 3->1, 4->1: min 1, max 2, mean 1.5, std sqrt(mean of 0.25) = 0.5.
    # Pairs over all C(4,2) = 6 pairs: (1,2)=2, (1,3)=1, (1,4)=1, (2,3)=1, (2,4)=1, (3,4)=0:
    # min 0, max 2, mean 1, variance (1+0+0+0+0+1)/6 = 1/3, std = sqrt(1/3).
    stats = design_stats([(1, 2, 3), (2, 1, 4)])
    assert stats["n_items"] == 4
    assert stats["n_tuples"] == 2
    assert stats["duplicate_tuples"] == 0
    assert (stats["appearance_min"], stats["appearance_max"]) == (1, 2)
    assert stats["appearance_std"] == pytest.approx(0.5)
    assert (stats["pair_min"], stats["pair_max"]) == (0, 2)
    assert stats["pair_std"] == pytest.approx(math.sqrt(1 / 3))


def test_design_stats_counts_repeated_tuples() -> None:
    assert design_stats([(1, 2, 3), (3, 2, 1), (1, 2, 4)])["duplicate_tuples"] == 1
