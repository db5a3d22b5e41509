"""The tracker's id rules on hand-made frames, its identity metrics on the synthetic sequences of
real instance masks, and the metrics themselves on tiny cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.tracking_sequences import LEVELS, frames

from fcclip_ros.tracking import Tracker, TrackerConfig
from fcclip_ros.tracking_metrics import evaluate, id_switches, idf1, ids_reused, reidentification

pytestmark = pytest.mark.fast

SIZE = 96
RNG = np.random.default_rng(7)
A, B, C = (vector / np.linalg.norm(vector) for vector in RNG.standard_normal((3, 64)))


def box(x: int, y: int, size: int = 16) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y:y + size, x:x + size] = True
    return mask


def step(tracker: Tracker, *segments: tuple[np.ndarray, int, bool, np.ndarray]) -> list[int]:
    """One frame of (mask, class id, is_thing, embedding) segments."""
    if not segments:
        return tracker.update(np.zeros((0, SIZE, SIZE), bool), [], [], None).tolist()
    masks, classes, things, embeddings = zip(*segments, strict=True)
    return tracker.update(np.array(masks), np.array(classes), np.array(things),
                          np.array(embeddings, np.float32)).tolist()


def blend(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def look_alike(vector: np.ndarray, cosine: float) -> np.ndarray:
    other = B - (B @ vector) * vector
    other /= np.linalg.norm(other)
    return cosine * vector + np.sqrt(1 - cosine**2) * other


def test_ids_start_at_1_and_are_uint32():
    ids = Tracker().update(np.array([box(0, 0), box(50, 50)]), np.array([1, 2]),
                           np.array([True, True]), None)
    assert ids.dtype == np.uint32
    assert ids.tolist() == [1, 2]


def test_identical_frames_keep_their_ids():
    tracker = Tracker()
    frame = [(box(0, 0), 1, True, A), (box(50, 50), 2, True, B), (box(0, 60, 30), 9, False, C)]
    first = step(tracker, *frame)
    assert all(step(tracker, *frame) == first for _ in range(5))


def test_ids_are_never_reused_after_tracks_expire():
    tracker = Tracker(TrackerConfig(max_lost_frames=2))
    seen: set[int] = set()
    for index in range(10):
        embedding = np.roll(A, index)  # a new object, the one before forgotten by now
        ids = step(tracker, (box(index * 8, 0), 1, True, embedding))
        step(tracker)
        step(tracker)
        step(tracker)
        assert not seen & set(ids)
        seen |= set(ids)
    assert len(seen) == 10


def test_same_input_sequence_gives_the_same_ids():
    def run() -> list[list[int]]:
        tracker = Tracker()
        return [tracker.update(frame.masks, frame.class_ids, frame.is_thing,
                               frame.embeddings).tolist()
                for _, frame in zip(range(30), frames("moderate"), strict=False)]

    assert run() == run()


def test_stuff_keeps_one_id_per_class_also_after_long_absence():
    tracker = Tracker(TrackerConfig(max_lost_frames=2))
    wall = step(tracker, (box(0, 0, 40), 30, False, A))
    for _ in range(10):
        step(tracker, (box(50, 50), 1, True, B))
    assert step(tracker, (box(40, 40, 50), 30, False, C)) == wall  # elsewhere, other looks
    assert step(tracker, (box(0, 0, 40), 31, False, A)) != wall  # another stuff class


def test_object_hidden_for_a_while_comes_back_with_its_id():
    tracker = Tracker()
    first = step(tracker, (box(10, 10), 1, True, A), (box(60, 60), 2, True, B))
    for _ in range(15):
        step(tracker, (box(60, 60), 2, True, B))
    assert step(tracker, (box(14, 12), 1, True, A), (box(60, 60), 2, True, B)) == first


def test_object_lost_longer_than_max_lost_frames_gets_a_new_id():
    tracker = Tracker(TrackerConfig(max_lost_frames=3))
    [first] = step(tracker, (box(10, 10), 1, True, A))
    for _ in range(4):
        step(tracker)
    assert step(tracker, (box(10, 10), 1, True, A)) != [first]


def test_look_alikes_are_not_swapped_when_overlap_disagrees():
    tracker = Tracker()
    twin = look_alike(A, 0.9)
    left, right = step(tracker, (box(10, 40), 1, True, A), (box(60, 40), 1, True, twin))
    # Each now looks a little more like the other one; the masks stay where they were.
    swapped = [blend(0.4 * A + 0.6 * twin), blend(0.6 * A + 0.4 * twin)]
    assert twin @ swapped[0] > A @ swapped[0] and A @ swapped[1] > twin @ swapped[1]
    assert step(tracker, (box(11, 40), 1, True, swapped[0]),
                (box(61, 40), 1, True, swapped[1])) == [left, right]


def test_a_far_away_dissimilar_segment_gets_a_new_id():
    tracker = Tracker()
    [first] = step(tracker, (box(0, 0), 1, True, A))
    [far_dissimilar] = step(tracker, (box(78, 78), 1, True, B))
    assert far_dissimilar != first


def test_a_far_away_look_alike_does_not_take_a_lost_track():
    tracker = Tracker()
    [first] = step(tracker, (box(0, 0), 1, True, A))
    assert step(tracker, (box(78, 78), 1, True, A)) != [first]


def test_a_dissimilar_segment_on_top_of_a_track_gets_a_new_id():
    tracker = Tracker()
    [first] = step(tracker, (box(20, 20), 1, True, A))
    assert step(tracker, (box(20, 20), 1, True, B)) != [first]


def test_a_class_flip_keeps_the_id():
    tracker = Tracker()
    first = step(tracker, (box(20, 20), 1, True, A))
    assert step(tracker, (box(21, 20), 7, True, A)) == first


def test_without_embeddings_overlap_alone_tracks():
    tracker = Tracker()
    ids = [tracker.update(box(20 + shift, 20)[None], [1], [True], None).tolist()
           for shift in range(0, 12, 2)]
    assert ids == [[1]] * 6


def test_reset_forgets_tracks_but_never_repeats_an_id():
    tracker = Tracker()
    before = step(tracker, (box(0, 0), 1, True, A), (box(50, 0, 30), 4, False, B))
    tracker.reset()
    assert tracker.track_count == 0
    after = step(tracker, (box(0, 0), 1, True, A), (box(50, 0, 30), 4, False, B))
    assert not set(before) & set(after)
    assert min(after) == max(before) + 1


def test_tracks_kept_are_bounded_and_the_longest_lost_go_first():
    tracker = Tracker(TrackerConfig(max_tracks=4))
    [oldest] = step(tracker, (box(0, 0, 8), 1, True, np.roll(A, 1)))
    for index in range(2, 10):
        step(tracker, (box(index * 9, 0, 8), 1, True, np.roll(A, index)))
        assert tracker.track_count <= 4
    assert step(tracker, (box(0, 0, 8), 1, True, np.roll(A, 1))) != [oldest]
    [latest] = step(tracker, (box(81, 0, 8), 1, True, np.roll(A, 9)))
    assert latest == 9


def test_update_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    ids = Tracker().update(torch.from_numpy(box(0, 0)[None]), torch.tensor([1]),
                           torch.tensor([True]), torch.from_numpy(A[None].astype(np.float32)))
    assert ids.tolist() == [1]


def run_sequence(name: str, **options) -> tuple[list[np.ndarray], list[np.ndarray]]:
    tracker = Tracker(TrackerConfig(**options))
    truth, predicted = [], []
    for frame in frames(name):
        predicted.append(tracker.update(frame.masks, frame.class_ids, frame.is_thing,
                                        frame.embeddings))
        truth.append(frame.gt_ids)
    return truth, predicted


@pytest.fixture(scope="module")
def moderate() -> tuple[list[np.ndarray], list[np.ndarray]]:
    return run_sequence("moderate")


def test_moderate_sequence_has_idf1_of_at_least_0_9(moderate):
    assert idf1(*moderate) >= 0.9


def test_moderate_sequence_reidentifies_90_percent_after_full_occlusion(moderate):
    recovered, reappearances = reidentification(*moderate, min_gap=5)
    assert reappearances >= 10  # the sequence really hides objects
    assert recovered >= 0.9 * reappearances


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_no_id_is_given_to_two_objects(name):
    assert ids_reused(*run_sequence(name)) == 0


def test_sequences_are_deterministic_and_frames_consistent():
    first = next(frames("hard", seed=3))
    again = next(frames("hard", seed=3))
    assert np.array_equal(first.masks, again.masks)
    assert np.array_equal(first.embeddings, again.embeddings)
    count = len(first.gt_ids)
    assert first.masks.shape == (count, 480, 640)
    assert first.class_ids.shape == first.is_thing.shape == (count,)
    assert np.allclose(np.linalg.norm(first.embeddings, axis=1), 1.0, atol=1e-5)


def test_idf1_of_a_known_split():
    # Object 1 seen 4 times: ids 5, 5, 5, 6 -> IDTP 3 of 4 (6 matches nothing else).
    assert idf1([[1], [1], [1], [1]], [[5], [5], [5], [6]]) == pytest.approx(0.75)


def test_idf1_matches_one_to_one():
    # One id for two objects: only one of them can own it.
    assert idf1([[1, 2], [1, 2]], [[5, 5], [5, 5]]) == pytest.approx(0.5)


def test_false_positives_are_left_out_of_every_metric():
    scores = evaluate([[1, 0], [1, 0]], [[5, 6], [5, 7]])
    assert (scores.idf1, scores.id_switches, scores.ids_reused) == (1.0, 0, 0)


def test_a_switch_counts_once_and_switching_back_counts_again():
    assert id_switches([[1], [1], [1], [1]], [[5], [6], [6], [5]]) == 2


def test_a_switch_across_a_gap_counts():
    assert id_switches([[1], [], [1]], [[5], [], [6]]) == 1


def test_a_swap_reuses_both_ids():
    assert ids_reused([[1, 2], [1, 2]], [[5, 6], [6, 5]]) == 2


def test_reidentification_counts_only_gaps_of_at_least_min_gap():
    truth = [[1, 2]] + [[]] * 3 + [[1]] + [[]] * 2 + [[1, 2]]
    predicted = [[5, 6]] + [[]] * 3 + [[5]] + [[]] * 2 + [[5, 9]]
    assert reidentification(truth, predicted, min_gap=3) == (1, 2)  # 1 back, 2 with a new id
    assert reidentification(truth, predicted, min_gap=7) == (0, 0)
