"""Scoring and statistics for Best-Worst Scaling annotations and model evaluation.

Pure numpy / scipy / choix / krippendorff; no database or web imports.

- BWS scores: counting (Orme 2009) and Bradley-Terry on the implied pairs.
- Reliability: split-half reliability of BWS scores, Krippendorff's alpha for ratings.
- Evaluation: percentile-bootstrap confidence interval of a mean, paired comparison of two
  systems over prompts (Wilcoxon signed-rank test + rank-biserial effect size).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import choix
import krippendorff
import numpy as np
from scipy import stats


@dataclass(frozen=True)
class BwsAnnotation:
    """One annotator's judgement of one tuple: which item is best and which is worst."""

    tuple_id: int
    items: tuple[int, ...]
    best: int
    worst: int

    def __post_init__(self) -> None:
        _check_judgement(self.items, self.best, self.worst)


def _check_judgement(items: Sequence[int], best: int, worst: int) -> None:
    if len(items) < 2 or len(set(items)) != len(items):
        raise ValueError(f"a tuple needs at least 2 distinct items, got {tuple(items)}")
    if best not in items or worst not in items:
        raise ValueError(f"best={best} and worst={worst} must both be in {tuple(items)}")
    if best == worst:
        raise ValueError(f"best and worst must differ (both {best})")


# --------------------------------------------------------------------------------------------
# BWS scores
# --------------------------------------------------------------------------------------------


def implied_pairs(items: Sequence[int], best: int, worst: int) -> list[tuple[int, int]]:
    """(winner, loser) pairs implied by one best/worst choice.

    Best beats each of the other k-1 items; each middle item beats worst. That gives 2k-3 pairs
    (5 for k = 4); the middle items stay unordered among themselves. Order: best's wins in the
    order of `items`, then the middle items' wins over worst.
    """
    _check_judgement(items, best, worst)
    pairs = [(best, other) for other in items if other != best]
    pairs += [(middle, worst) for middle in items if middle not in (best, worst)]
    return pairs


@dataclass(frozen=True)
class ItemTally:
    """How often an item was shown (per annotation), chosen best and chosen worst."""

    appearances: int
    best: int
    worst: int

    @property
    def score(self) -> float:
        """Counting score (#best - #worst) / #appearances, in [-1, 1]."""
        return (self.best - self.worst) / self.appearances


def counting_tallies(annotations: Iterable[BwsAnnotation]) -> dict[int, ItemTally]:
    """Per item, in item order: appearances, times best, times worst (a tuple annotated three times counts
    three times)."""
    best: dict[int, int] = defaultdict(int)
    worst: dict[int, int] = defaultdict(int)
    seen: dict[int, int] = defaultdict(int)
    for annotation in annotations:
        for item in annotation.items:
            seen[item] += 1
        best[annotation.best] += 1
        worst[annotation.worst] += 1
    return {item: ItemTally(seen[item], best[item], worst[item]) for item in sorted(seen)}


def counting_scores(annotations: Iterable[BwsAnnotation]) -> dict[int, float]:
    """Counting score (#best - #worst) / #appearances per item, in [-1, 1].

    Appearances are counted per annotation: a tuple annotated three times counts three times.
    """
    return {item: tally.score for item, tally in counting_tallies(annotations).items()}


def pair_margin(scores: dict[int, float], winner: int, loser: int) -> float:
    """How much more clearly the winner was preferred: counting-score difference, floored at 0.
    Used as the `margin` column of preference pairs (TRL's RewardTrainer adds it to its loss)."""
    return max(0.0, scores.get(winner, 0.0) - scores.get(loser, 0.0))


def bradley_terry_scores(
    annotations: Iterable[BwsAnnotation], alpha: float = 0.01
) -> dict[int, float]:
    """Bradley-Terry strengths fitted to the implied pairs, centred to mean 0.

    P(i beats j) = exp(u_i) / (exp(u_i) + exp(u_j)). Fitted with choix.ilsr_pairwise; `alpha` is
    its L2 regularisation, which keeps scores finite for items that always win or always lose.
    The scale is logits: a gap of 1.0 means odds of e (about 73 %) that the higher one wins.
    """
    annotations = list(annotations)
    items = sorted({item for a in annotations for item in a.items})
    if not items:
        return {}
    index = {item: i for i, item in enumerate(items)}
    comparisons = [
        (index[winner], index[loser])
        for a in annotations
        for winner, loser in implied_pairs(a.items, a.best, a.worst)
    ]
    strengths = np.asarray(choix.ilsr_pairwise(len(items), comparisons, alpha=alpha))
    strengths = strengths - strengths.mean()
    return {item: float(strengths[index[item]]) for item in items}


# --------------------------------------------------------------------------------------------
# Reliability
# --------------------------------------------------------------------------------------------


def split_half_reliability(
    annotations: Iterable[BwsAnnotation], trials: int = 100, seed: int = 0
) -> dict[str, float | int | None]:
    """Split-half reliability (SHR) of counting scores, as in Kiritchenko & Mohammad.

    Each trial splits every tuple's annotations at random into two halves (with an odd count the
    extra one goes to a random half), scores each half by counting, and correlates the two score
    lists over the items present in both halves. No Spearman-Brown correction.

    Tuples with fewer than 2 annotations are ignored. A trial is skipped when fewer than 3 items
    are shared or either score list is constant (correlation undefined). Returns
    {spearman_mean, spearman_std, pearson_mean, pearson_std, trials} where `trials` is the number
    of trials used; when no trial is usable the four metrics are None and trials is 0.
    Standard deviations are population (ddof=0) values over trials.
    """
    by_tuple: dict[int, list[BwsAnnotation]] = defaultdict(list)
    for annotation in annotations:
        by_tuple[annotation.tuple_id].append(annotation)
    groups = [group for _, group in sorted(by_tuple.items()) if len(group) >= 2]

    rng = random.Random(seed)
    spearman: list[float] = []
    pearson: list[float] = []
    for _ in range(trials if groups else 0):
        half_a: list[BwsAnnotation] = []
        half_b: list[BwsAnnotation] = []
        for group in groups:
            shuffled = group[:]
            rng.shuffle(shuffled)
            cut = len(shuffled) // 2
            if len(shuffled) % 2 and rng.random() < 0.5:
                cut += 1  # the odd one out goes to half A instead of half B
            half_a += shuffled[:cut]
            half_b += shuffled[cut:]
        scores_a, scores_b = counting_scores(half_a), counting_scores(half_b)
        shared = sorted(scores_a.keys() & scores_b.keys())
        x = np.array([scores_a[i] for i in shared])
        y = np.array([scores_b[i] for i in shared])
        if len(shared) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        spearman.append(float(stats.spearmanr(x, y).statistic))
        pearson.append(float(stats.pearsonr(x, y).statistic))

    if not spearman:
        return {
            "spearman_mean": None,
            "spearman_std": None,
            "pearson_mean": None,
            "pearson_std": None,
            "trials": 0,
        }
    return {
        "spearman_mean": float(np.mean(spearman)),
        "spearman_std": float(np.std(spearman)),
        "pearson_mean": float(np.mean(pearson)),
        "pearson_std": float(np.std(pearson)),
        "trials": len(spearman),
    }


_LEVELS = ("nominal", "ordinal", "interval", "ratio")


def krippendorff_alpha(
    ratings: Iterable[tuple[Hashable, Hashable, float]], level: str = "ordinal"
) -> float | None:
    """Krippendorff's alpha for (unit, rater, value) triples; missing ratings are allowed.

    alpha = 1 - D_observed / D_expected (1 = perfect agreement, 0 = chance level). Returns None
    when it is undefined: fewer than 2 pairable values (values in units rated at least twice), or
    all pairable values identical (no disagreement is possible, so D_expected = 0).
    A rater rating the same unit twice raises ValueError.
    """
    if level not in _LEVELS:
        raise ValueError(f"level must be one of {_LEVELS}, got {level!r}")
    table: dict[Hashable, dict[Hashable, float]] = defaultdict(dict)
    raters: dict[Hashable, None] = {}  # insertion-ordered set
    for unit, rater, value in ratings:
        if rater in table[unit]:
            raise ValueError(f"rater {rater!r} rated unit {unit!r} more than once")
        table[unit][rater] = float(value)
        raters[rater] = None

    pairable = [v for by_rater in table.values() if len(by_rater) >= 2 for v in by_rater.values()]
    if len(pairable) < 2 or len(set(pairable)) < 2:
        return None

    units = list(table)
    matrix = np.full((len(raters), len(units)), np.nan)
    for column, unit in enumerate(units):
        for row, rater in enumerate(raters):
            if rater in table[unit]:
                matrix[row, column] = table[unit][rater]
    return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement=level))


# --------------------------------------------------------------------------------------------
# Evaluation statistics
# --------------------------------------------------------------------------------------------


def bootstrap_mean_ci(
    values: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean, low, high): the sample mean and a percentile-bootstrap confidence interval.

    Resample the values with replacement `n_resamples` times; the interval runs from the
    (1 - confidence)/2 to the (1 + confidence)/2 quantile of the resampled means. Seeded, so
    reproducible. A single value gives (v, v, v); an empty input raises ValueError.
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("bootstrap_mean_ci needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    # Resample in batches so memory stays around a million numbers whatever the input size.
    batch = max(1, 1_000_000 // data.size)
    chunks = []
    for start in range(0, n_resamples, batch):
        rows = min(batch, n_resamples - start)
        picks = rng.integers(0, data.size, size=(rows, data.size))
        chunks.append(data[picks].mean(axis=1))
    means = np.concatenate(chunks)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(data.mean()), float(low), float(high)


def paired_comparison(
    a_by_prompt: Mapping[Hashable, float], b_by_prompt: Mapping[Hashable, float]
) -> dict[str, float | int | None]:
    """Compare system A with system B on the prompts both have a score for.

    With d_i = a_i - b_i over the n shared prompts:
    - mean_difference = mean(d_i); positive means A scores higher.
    - Wilcoxon signed-rank test (scipy.stats.wilcoxon, two-sided, zero differences dropped):
      rank |d_i| over the n_nonzero non-zero differences (ties get average ranks);
      W+ = sum of ranks of positive d_i, W- = sum of ranks of negative d_i;
      wilcoxon_statistic = min(W+, W-) as scipy reports it, plus its p_value.
    - rank_biserial = (W+ - W-) / (W+ + W-), the matched-pairs rank-biserial correlation
      (Kerby 2014), in [-1, 1]; +1 means A wins on every prompt that differs.
    When every difference is zero: statistic 0.0, p_value 1.0, rank_biserial 0.0.
    When no prompt is shared: n = 0 and all other values None.
    """
    shared = sorted(a_by_prompt.keys() & b_by_prompt.keys(), key=repr)
    if not shared:
        return {
            "n": 0,
            "n_nonzero": None,
            "mean_difference": None,
            "wilcoxon_statistic": None,
            "p_value": None,
            "rank_biserial": None,
        }
    diffs = np.array([a_by_prompt[p] - b_by_prompt[p] for p in shared], dtype=float)
    nonzero = diffs[diffs != 0]
    result: dict[str, float | int | None] = {
        "n": len(shared),
        "n_nonzero": int(nonzero.size),
        "mean_difference": float(diffs.mean()),
    }
    if nonzero.size == 0:
        # scipy cannot rank an empty set; no evidence of any difference.
        return {**result, "wilcoxon_statistic": 0.0, "p_value": 1.0, "rank_biserial": 0.0}

    ranks = stats.rankdata(np.abs(nonzero))
    w_plus, w_minus = ranks[nonzero > 0].sum(), ranks[nonzero < 0].sum()
    test = stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided")
    p_value = float(test.pvalue)
    return {
        **result,
        "wilcoxon_statistic": float(test.statistic),
        "p_value": 1.0 if math.isnan(p_value) else p_value,
        "rank_biserial": float((w_plus - w_minus) / (w_plus + w_minus)),
    }
