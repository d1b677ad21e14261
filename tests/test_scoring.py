"""Tests for app.services.scoring, mostly against small hand-computed examples."""

import math
import random

import numpy as np
import pytest

from app.services.scoring import (
    BwsAnnotation,
    bootstrap_mean_ci,
    bradley_terry_scores,
    counting_scores,
    implied_pairs,
    krippendorff_alpha,
    paired_comparison,
    split_half_reliability,
)

# ---------------------------------------------------------------------------------------------
# Annotations and implied pairs
# ---------------------------------------------------------------------------------------------


def test_implied_pairs_for_a_4_tuple() -> None:
    # Best 20 beats 10, 30, 40; middles 10 and 30 beat worst 40: 2k - 3 = 5 pairs.
    pairs = implied_pairs((10, 20, 30, 40), best=20, worst=40)
    assert pairs == [(20, 10), (20, 30), (20, 40), (10, 40), (30, 40)]
    assert (10, 30) not in pairs and (30, 10) not in pairs  # middles stay unordered


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6])
def test_implied_pairs_count_is_2k_minus_3(k: int) -> None:
    items = tuple(range(k))
    assert len(implied_pairs(items, best=0, worst=k - 1)) == 2 * k - 3


@pytest.mark.parametrize(
    "items, best, worst",
    [((1, 2, 3, 4), 1, 1), ((1, 2, 3, 4), 5, 1), ((1, 2, 3, 4), 1, 5), ((1, 1, 2, 3), 1, 2)],
)
def test_invalid_judgements_raise(items: tuple[int, ...], best: int, worst: int) -> None:
    with pytest.raises(ValueError):
        implied_pairs(items, best, worst)
    with pytest.raises(ValueError):
        BwsAnnotation(tuple_id=1, items=items, best=best, worst=worst)


def test_annotation_is_frozen() -> None:
    annotation = BwsAnnotation(tuple_id=1, items=(1, 2, 3, 4), best=1, worst=4)
    with pytest.raises(AttributeError):
        annotation.best = 2  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Counting scores
# ---------------------------------------------------------------------------------------------

HAND_EXAMPLE = [
    BwsAnnotation(tuple_id=1, items=(1, 2, 3, 4), best=1, worst=4),
    BwsAnnotation(tuple_id=2, items=(1, 2, 3, 5), best=2, worst=1),
    BwsAnnotation(tuple_id=3, items=(2, 3, 4, 5), best=2, worst=5),
]


def test_counting_scores_hand_computed() -> None:
    # appearances: 1 -> 2, 2 -> 3, 3 -> 3, 4 -> 2, 5 -> 2
    # best:        1 -> 1, 2 -> 2                 worst: 4 -> 1, 1 -> 1, 5 -> 1
    # item 1: (1 - 1) / 2 = 0      item 2: (2 - 0) / 3 = 2/3    item 3: (0 - 0) / 3 = 0
    # item 4: (0 - 1) / 2 = -1/2   item 5: (0 - 1) / 2 = -1/2
    scores = counting_scores(HAND_EXAMPLE)
    assert scores == pytest.approx({1: 0.0, 2: 2 / 3, 3: 0.0, 4: -0.5, 5: -0.5})


def test_counting_counts_appearances_per_annotation() -> None:
    # One tuple, three annotators. Item 1: best twice, worst once, seen 3 times -> 1/3.
    # Item 2: best once -> 1/3. Item 3: worst twice -> -2/3. Item 4: never chosen -> 0.
    annotations = [
        BwsAnnotation(7, (1, 2, 3, 4), best=1, worst=3),
        BwsAnnotation(7, (1, 2, 3, 4), best=1, worst=3),
        BwsAnnotation(7, (1, 2, 3, 4), best=2, worst=1),
    ]
    assert counting_scores(annotations) == pytest.approx({1: 1 / 3, 2: 1 / 3, 3: -2 / 3, 4: 0.0})


def test_counting_scores_empty() -> None:
    assert counting_scores([]) == {}


# ---------------------------------------------------------------------------------------------
# Bradley-Terry
# ---------------------------------------------------------------------------------------------


def test_bradley_terry_two_items_matches_closed_form() -> None:
    # Pairs (k = 2): item 1 wins 3 of 4. MLE: exp(d) / (1 + exp(d)) = 3/4, so d = u1 - u2 = ln 3;
    # centred: u1 = ln(3)/2 = 0.5493, u2 = -0.5493. A tiny alpha keeps the fit close to the MLE.
    annotations = [BwsAnnotation(i, (1, 2), best=1, worst=2) for i in range(3)]
    annotations.append(BwsAnnotation(3, (1, 2), best=2, worst=1))
    scores = bradley_terry_scores(annotations, alpha=1e-6)
    assert scores[1] == pytest.approx(math.log(3) / 2, abs=1e-3)
    assert scores[2] == pytest.approx(-math.log(3) / 2, abs=1e-3)


def test_bradley_terry_recovers_a_consistent_order() -> None:
    # Annotators always follow the true order 0 > 1 > ... > 7 (smaller id is better).
    rng = random.Random(0)
    annotations = []
    for tuple_id in range(60):
        items = tuple(sorted(rng.sample(range(8), 4)))
        annotations.append(BwsAnnotation(tuple_id, items, best=min(items), worst=max(items)))
    scores = bradley_terry_scores(annotations)
    ranked = sorted(scores, key=scores.get, reverse=True)
    assert ranked == list(range(8))
    assert sum(scores.values()) == pytest.approx(0.0, abs=1e-9)  # centred


def test_bradley_terry_symmetric_items_tie() -> None:
    # Both annotators pick 1 as best; the worst is 4 once and 3 once. Implied pairs:
    #   A: 1>2 1>3 1>4 2>4 3>4        B: 1>2 1>3 1>4 2>3 4>3
    # Swapping 3 and 4 maps A onto B, so 3 and 4 must tie. Wins/losses: 1: 6/0, 2: 2/2,
    # 3: 1/4, 4: 1/4, hence 1 > 2 > 3 = 4.
    annotations = [
        BwsAnnotation(1, (1, 2, 3, 4), best=1, worst=4),
        BwsAnnotation(1, (1, 2, 3, 4), best=1, worst=3),
    ]
    scores = bradley_terry_scores(annotations)
    assert scores[3] == pytest.approx(scores[4], abs=1e-6)
    assert scores[1] > scores[2] > scores[3]
    assert sum(scores.values()) == pytest.approx(0.0, abs=1e-9)


def test_bradley_terry_agrees_with_counting_on_order_of_hand_example() -> None:
    # Counting gave 2 > {1, 3} > {4, 5}; BT should also put 2 on top and 4, 5 below 1 and 3.
    scores = bradley_terry_scores(HAND_EXAMPLE)
    assert max(scores, key=scores.get) == 2
    assert min(scores[1], scores[3]) > max(scores[4], scores[5])


def test_bradley_terry_empty() -> None:
    assert bradley_terry_scores([]) == {}


# ---------------------------------------------------------------------------------------------
# Split-half reliability
# ---------------------------------------------------------------------------------------------


def _random_tuples(n_items: int, n_tuples: int, seed: int) -> list[tuple[int, ...]]:
    rng = random.Random(seed)
    return [tuple(sorted(rng.sample(range(n_items), 4))) for _ in range(n_tuples)]


@pytest.mark.parametrize("per_tuple", [2, 4])
def test_split_half_is_one_when_annotators_agree(per_tuple: int) -> None:
    # Everybody follows the same true order (smaller id better). With an even number of
    # annotations per tuple each half holds exactly half of each tuple's identical judgements,
    # so both halves give identical counting scores: correlation exactly 1 in every trial.
    annotations = [
        BwsAnnotation(t, items, best=min(items), worst=max(items))
        for t, items in enumerate(_random_tuples(30, 60, seed=1))
        for _ in range(per_tuple)
    ]
    result = split_half_reliability(annotations, trials=20, seed=0)
    assert result["trials"] == 20
    assert result["spearman_mean"] == pytest.approx(1.0)
    assert result["pearson_mean"] == pytest.approx(1.0)
    assert result["spearman_std"] == pytest.approx(0.0, abs=1e-12)


def test_split_half_is_about_zero_for_random_judgements() -> None:
    rng = random.Random(5)
    annotations = []
    for t, items in enumerate(_random_tuples(200, 400, seed=2)):
        for _ in range(2):
            best, worst = rng.sample(items, 2)
            annotations.append(BwsAnnotation(t, items, best=best, worst=worst))
    result = split_half_reliability(annotations, trials=30, seed=0)
    assert result["trials"] == 30
    # 200 items: one trial's correlation has sd about 1/sqrt(200) = 0.07 under no signal.
    assert abs(result["spearman_mean"]) < 0.1
    assert abs(result["pearson_mean"]) < 0.1


def test_split_half_is_reproducible_and_high_for_noisy_but_real_signal() -> None:
    # Annotators see a noisy version of the true quality -(id); reliability well above zero.
    rng = random.Random(3)
    annotations = []
    for t, items in enumerate(_random_tuples(40, 80, seed=4)):
        for _ in range(3):  # odd: the extra annotation goes to a random half
            noisy = sorted(items, key=lambda i: i + rng.gauss(0, 8))
            annotations.append(BwsAnnotation(t, items, best=noisy[0], worst=noisy[-1]))
    first = split_half_reliability(annotations, trials=20, seed=11)
    assert first == split_half_reliability(annotations, trials=20, seed=11)
    assert first["spearman_mean"] > 0.5


def test_split_half_returns_none_without_repeated_annotations() -> None:
    # Every tuple annotated once: nothing to split.
    result = split_half_reliability(HAND_EXAMPLE, trials=10)
    assert result == {
        "spearman_mean": None,
        "spearman_std": None,
        "pearson_mean": None,
        "pearson_std": None,
        "trials": 0,
    }


# ---------------------------------------------------------------------------------------------
# Krippendorff's alpha
# ---------------------------------------------------------------------------------------------

# Two raters, three units: unit u1 (1, 1), u2 (2, 2), u3 (3, 4). n = 6 pairable values.
TWO_RATERS = [
    ("u1", "A", 1), ("u1", "B", 1),
    ("u2", "A", 2), ("u2", "B", 2),
    ("u3", "A", 3), ("u3", "B", 4),
]  # fmt: skip


def test_alpha_interval_hand_computed() -> None:
    # alpha = 1 - D_o / D_e with squared differences.
    # D_o = (1/n) * sum over units of ordered within-unit pairs / (m_u - 1)
    #     = (1/6) * [(3-4)^2 + (4-3)^2] / 1 = 2/6 = 1/3.
    # D_e = sum over all ordered pairs of values / (n (n-1)). Values {1,1,2,2,3,4}:
    #     sum_{i<j} (v_i - v_j)^2 = n * sum v^2 - (sum v)^2 = 6 * 35 - 13^2 = 41, ordered: 82;
    #     D_e = 82 / 30 = 41/15.
    # alpha = 1 - (1/3) / (41/15) = 1 - 5/41 = 36/41 = 0.87805.
    assert krippendorff_alpha(TWO_RATERS, level="interval") == pytest.approx(36 / 41)


def test_alpha_ordinal_hand_computed() -> None:
    # Value frequencies n_1 = 2, n_2 = 2, n_3 = 1, n_4 = 1; coincidences o_34 = o_43 = 1.
    # Ordinal distance: delta_ck = (sum_{g=c..k} n_g - (n_c + n_k)/2)^2:
    #   d12 = (4-2)^2 = 4, d13 = (5-1.5)^2 = 12.25, d14 = (6-1.5)^2 = 20.25,
    #   d23 = (3-1.5)^2 = 2.25, d24 = (4-1.5)^2 = 6.25, d34 = (2-1)^2 = 1.
    # Observed: sum o_ck d_ck = 2 * 1 = 2.
    # Expected: 2 * sum_{c<k} n_c n_k d_ck = 2 * (16 + 24.5 + 40.5 + 4.5 + 12.5 + 1) = 198.
    # alpha = 1 - (n - 1) * 2 / 198 = 1 - 10/198 = 94/99 = 0.94949.
    assert krippendorff_alpha(TWO_RATERS, level="ordinal") == pytest.approx(94 / 99)


def test_alpha_nominal_hand_computed() -> None:
    # Disagreeing coincidences: o_34 + o_43 = 2. Expected disagreement: n^2 - sum n_c^2
    # = 36 - (4 + 4 + 1 + 1) = 26. alpha = 1 - (n - 1) * 2 / 26 = 1 - 10/26 = 8/13.
    assert krippendorff_alpha(TWO_RATERS, level="nominal") == pytest.approx(8 / 13)


def test_alpha_is_default_ordinal_and_ignores_unpairable_units() -> None:
    # A unit rated by one rater only carries no agreement information and changes nothing.
    with_single = [*TWO_RATERS, ("u4", "A", 4)]
    assert krippendorff_alpha(with_single) == pytest.approx(94 / 99)


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval", "ratio"])
def test_alpha_is_one_for_perfect_agreement(level: str) -> None:
    ratings = [(unit, rater, value) for unit, value in enumerate([1, 3, 2, 5, 4]) for rater in "ABC"]
    assert krippendorff_alpha(ratings, level=level) == pytest.approx(1.0)


def test_alpha_none_when_undefined() -> None:
    assert krippendorff_alpha([]) is None
    assert krippendorff_alpha([("u1", "A", 3), ("u2", "B", 4)]) is None  # nothing pairable
    assert krippendorff_alpha([("u1", "A", 3), ("u1", "B", 3)]) is None  # no variation at all


def test_alpha_rejects_repeated_rating_and_unknown_level() -> None:
    with pytest.raises(ValueError, match="more than once"):
        krippendorff_alpha([("u1", "A", 1), ("u1", "A", 2), ("u1", "B", 2)])
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha(TWO_RATERS, level="cardinal")


# ---------------------------------------------------------------------------------------------
# Bootstrap confidence interval
# ---------------------------------------------------------------------------------------------


def test_bootstrap_two_values_hand_computed() -> None:
    # Values {0, 1}: a resample of size 2 has mean 0 (prob 1/4), 0.5 (1/2) or 1 (1/4).
    # 95 % interval: 2.5 % and 97.5 % quantiles = 0 and 1.
    # 40 % interval: 30 % and 70 % quantiles both fall in the 0.5 mass (0.25 < 0.3, 0.7 < 0.75).
    assert bootstrap_mean_ci([0, 1]) == (0.5, 0.0, 1.0)
    assert bootstrap_mean_ci([0, 1], confidence=0.4) == (0.5, 0.5, 0.5)


def test_bootstrap_constant_and_single_values() -> None:
    assert bootstrap_mean_ci([3.0, 3.0, 3.0]) == (3.0, 3.0, 3.0)
    assert bootstrap_mean_ci([7.5]) == (7.5, 7.5, 7.5)
    with pytest.raises(ValueError):
        bootstrap_mean_ci([])


def test_bootstrap_contains_mean_narrows_with_data_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=25), rng.normal(size=400)
    mean_s, low_s, high_s = bootstrap_mean_ci(small)
    mean_l, low_l, high_l = bootstrap_mean_ci(large)
    assert low_s < mean_s < high_s and low_l < mean_l < high_l
    assert mean_l == pytest.approx(large.mean())
    assert high_l - low_l < high_s - low_s
    # Roughly the normal-theory width 2 * 1.96 * sd / sqrt(n) (about 0.196 for n = 400).
    assert high_l - low_l == pytest.approx(2 * 1.96 * large.std() / 20, rel=0.15)
    assert bootstrap_mean_ci(small, seed=3) == bootstrap_mean_ci(small, seed=3)


# ---------------------------------------------------------------------------------------------
# Paired comparison (Wilcoxon signed-rank)
# ---------------------------------------------------------------------------------------------


def test_paired_comparison_hand_computed() -> None:
    # d = a - b = [1, -2, 3, 4, 5]; ranks of |d| = 1..5.
    # W+ = 1 + 3 + 4 + 5 = 13, W- = 2; scipy's statistic min(W+, W-) = 2.
    # Exact two-sided p: sign patterns with W- <= 2 are the subsets {}, {1}, {2} of ranks:
    # p = 2 * 3 / 2^5 = 0.1875. Rank-biserial = (13 - 2) / 15 = 11/15. Mean d = 11/5.
    # Prompt "x" only in a and "y" only in b are ignored.
    a = {"p1": 3.0, "p2": 1.0, "p3": 5.0, "p4": 6.0, "p5": 9.0, "x": 100.0}
    b = {"p1": 2.0, "p2": 3.0, "p3": 2.0, "p4": 2.0, "p5": 4.0, "y": -100.0}
    result = paired_comparison(a, b)
    assert result["n"] == 5
    assert result["n_nonzero"] == 5
    assert result["mean_difference"] == pytest.approx(2.2)
    assert result["wilcoxon_statistic"] == pytest.approx(2.0)
    assert result["p_value"] == pytest.approx(0.1875)
    assert result["rank_biserial"] == pytest.approx(11 / 15)


def test_paired_comparison_drops_zero_differences_and_is_antisymmetric() -> None:
    # Same as above plus a tie on p0: n counts it, the test and effect size do not.
    a = {"p0": 1.0, "p1": 1.0, "p2": -2.0, "p3": 3.0, "p4": 4.0, "p5": 5.0}
    b = {key: 0.0 for key in a}
    b["p0"] = 1.0
    forward, backward = paired_comparison(a, b), paired_comparison(b, a)
    assert (forward["n"], forward["n_nonzero"]) == (6, 5)
    assert forward["mean_difference"] == pytest.approx(11 / 6)
    assert forward["p_value"] == pytest.approx(0.1875)
    assert forward["rank_biserial"] == pytest.approx(11 / 15)
    assert backward["rank_biserial"] == pytest.approx(-11 / 15)
    assert backward["mean_difference"] == pytest.approx(-11 / 6)
    assert backward["p_value"] == pytest.approx(forward["p_value"])


def test_paired_comparison_with_tied_ranks() -> None:
    # d = [1, 1, -1, 2]: |d| ranks 2, 2, 2 (average of 1..3) and 4.
    # W+ = 2 + 2 + 4 = 8, W- = 2, statistic 2, rank-biserial (8 - 2) / 10 = 0.6.
    result = paired_comparison({1: 1, 2: 1, 3: -1, 4: 2}, {1: 0, 2: 0, 3: 0, 4: 0})
    assert result["wilcoxon_statistic"] == pytest.approx(2.0)
    assert result["rank_biserial"] == pytest.approx(0.6)
    assert 0.0 < result["p_value"] <= 1.0


def test_paired_comparison_all_equal_and_no_overlap() -> None:
    same = paired_comparison({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.0})
    assert same == {
        "n": 2,
        "n_nonzero": 0,
        "mean_difference": 0.0,
        "wilcoxon_statistic": 0.0,
        "p_value": 1.0,
        "rank_biserial": 0.0,
    }
    empty = paired_comparison({"a": 1.0}, {"b": 1.0})
    assert empty["n"] == 0 and empty["p_value"] is None


def test_paired_comparison_detects_consistent_improvement() -> None:
    # A beats B on all 20 prompts: W- = 0, exact two-sided p = 2 / 2^20, effect size +1.
    a = {p: 1.0 + 0.1 * p for p in range(20)}
    b = {p: 0.5 + 0.05 * p for p in range(20)}
    result = paired_comparison(a, b)
    assert result["wilcoxon_statistic"] == 0.0
    assert result["p_value"] == pytest.approx(2 / 2**20)
    assert result["rank_biserial"] == 1.0
