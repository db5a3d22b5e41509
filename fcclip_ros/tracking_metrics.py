"""Identity metrics of a tracker, from their definitions, for sequences whose detections already
know their ground-truth object (so no spatial matching is needed).

Each function takes, per frame, the ground-truth ids of the detections (0: a false positive) and
the ids the tracker gave them, aligned. False positives are left out everywhere: a tracker must
give every detection an id, so they would lower every tracker alike. IDF1 follows Ristani et al.
2016, ID switches CLEAR MOT (Bernardin & Stiefelhagen 2008).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

Ids = Sequence[Sequence[int] | np.ndarray]  # per frame, one id per detection


def _pairs(gt_ids: Ids, predicted_ids: Ids) -> Iterator[tuple[int, int, int]]:
    """(frame, ground-truth id, predicted id) of every detection of a real object."""
    if len(gt_ids) != len(predicted_ids):
        raise ValueError("ground truth and predictions differ in their number of frames")
    for frame, (gt, predicted) in enumerate(zip(gt_ids, predicted_ids, strict=True)):
        gt, predicted = np.asarray(gt).ravel(), np.asarray(predicted).ravel()
        if gt.shape != predicted.shape:
            raise ValueError(f"frame {frame}: {gt.size} ground-truth ids, {predicted.size} ids")
        for truth, guess in zip(gt.tolist(), predicted.tolist(), strict=True):
            if truth != 0:
                yield frame, truth, guess


def idf1(gt_ids: Ids, predicted_ids: Ids) -> float:
    """2 IDTP / (2 IDTP + IDFP + IDFN), IDTP from the one-to-one matching of ground-truth ids to
    predicted ids that keeps the most detections; 1.0 for a sequence without objects."""
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for _, truth, guess in _pairs(gt_ids, predicted_ids):
        counts[truth, guess] += 1
    if not counts:
        return 1.0
    truths = sorted({truth for truth, _ in counts})
    guesses = sorted({guess for _, guess in counts})
    table = np.zeros((len(truths), len(guesses)))
    row = {truth: index for index, truth in enumerate(truths)}
    col = {guess: index for index, guess in enumerate(guesses)}
    for (truth, guess), number in counts.items():
        table[row[truth], col[guess]] = number
    rows, cols = linear_sum_assignment(-table)
    true_positives = table[rows, cols].sum()
    total = table.sum()  # ground-truth detections = predicted detections here
    false_negatives = false_positives = total - true_positives
    return float(2 * true_positives / (2 * true_positives + false_positives + false_negatives))


def id_switches(gt_ids: Ids, predicted_ids: Ids) -> int:
    """Detections whose predicted id differs from the one their object had when last seen."""
    last: dict[int, int] = {}
    switches = 0
    for _, truth, guess in _pairs(gt_ids, predicted_ids):
        switches += truth in last and last[truth] != guess
        last[truth] = guess
    return switches


def ids_reused(gt_ids: Ids, predicted_ids: Ids) -> int:
    """Predicted ids that were given to more than one real object over the sequence."""
    owners: dict[int, set[int]] = defaultdict(set)
    for _, truth, guess in _pairs(gt_ids, predicted_ids):
        owners[guess].add(truth)
    return sum(len(objects) > 1 for objects in owners.values())


def reidentification(gt_ids: Ids, predicted_ids: Ids, min_gap: int = 5) -> tuple[int, int]:
    """(recovered, reappearances): an object reappears when it comes back after ≥ `min_gap`
    frames without a detection (hidden, out of view, missed); it is recovered when it gets the
    id it had before the gap."""
    last: dict[int, tuple[int, int]] = {}  # object: (frame, predicted id) of its last detection
    recovered = reappearances = 0
    for frame, truth, guess in _pairs(gt_ids, predicted_ids):
        if truth in last and frame - last[truth][0] - 1 >= min_gap:
            reappearances += 1
            recovered += last[truth][1] == guess
        last[truth] = frame, guess
    return recovered, reappearances


@dataclass(frozen=True)
class TrackingScores:
    """The identity metrics of one sequence."""

    idf1: float
    id_switches: int
    ids_reused: int
    recovered: int
    reappearances: int
    frames: int

    @property
    def reidentified(self) -> float:
        """Share of reappearances that got their old id back (1.0 when there were none)."""
        return self.recovered / self.reappearances if self.reappearances else 1.0


def evaluate(gt_ids: Ids, predicted_ids: Ids, min_gap: int = 5) -> TrackingScores:
    """All metrics of one sequence."""
    recovered, reappearances = reidentification(gt_ids, predicted_ids, min_gap)
    return TrackingScores(idf1(gt_ids, predicted_ids), id_switches(gt_ids, predicted_ids),
                          ids_reused(gt_ids, predicted_ids), recovered, reappearances,
                          len(gt_ids))
