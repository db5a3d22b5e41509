"""Vocabulary model: official presets, entry syntax, thing/stuff kinds, validation, atomic swaps."""

from __future__ import annotations

import dataclasses
import hashlib
import queue
import threading

import open_clip
import pytest
import torch

from fcclip_ros.text_embeddings import TEMPLATES
from fcclip_ros.vocabulary import (
    MAX_CLASSES,
    MAX_ENTRY_CHARS,
    PRESETS,
    ActiveVocabulary,
    Vocabulary,
    VocabularyBusyError,
    VocabularyClass,
    VocabularyError,
    VocabularyState,
    infer_is_thing,
    parse_entry,
)

pytestmark = pytest.mark.fast

# Digests of the official lists, computed from bytedance/fc-clip@2b0bbe2 with the official parsing:
# sha256 of "\n".join(",".join(synonyms) per class) in official order, and of repr(thing indices)
# from the isthing flags of openseg_classes.py (None where the dataset has no panoptic split).
OFFICIAL_DIGESTS = {
    "coco": ("1982b2a1de45f194", "1aac576c334004f3"),
    "ade20k": ("c376388623b7ce59", "9ba1667bc8325127"),
    "ade20k_full": ("a230752608ae8576", None),
    "cityscapes": ("8324a5fa73ee469c", "daa8dc23175b9146"),
    "mapillary": ("48e27a6042080d40", "1cd11b3a624c032d"),
    "pascal_context": ("d35f0ebdf401b25c", None),
    "pascal_context_full": ("e25c9795c8bb2a06", None),
    "pascal_voc": ("767fa0a2c40c7ef2", None),
    "lvis": ("fd01c995065528aa", None),
}

# classes / synonyms (reference §4), things (official isthing; LVIS all things as in the demo),
# seen classes (reference §5.6).
OFFICIAL_COUNTS = {
    "coco": (133, 254, 80, 133),
    "ade20k": (150, 403, 100, 64),
    "ade20k_full": (847, 1342, None, 101),
    "cityscapes": (19, 60, 8, 17),
    "mapillary": (65, 153, 37, 26),
    "pascal_context": (59, 160, None, 51),
    "pascal_context_full": (459, 559, None, 85),
    "pascal_voc": (21, 153, None, 21),
    "lvis": (1203, 1825, 1203, 80),
}

SEMANTIC_ONLY = ("ade20k_full", "pascal_context", "pascal_context_full", "pascal_voc")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_preset_names_are_the_nine_official_vocabularies() -> None:
    assert set(PRESETS) == set(OFFICIAL_COUNTS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_matches_official_counts(name: str) -> None:
    classes, synonyms, things, seen = OFFICIAL_COUNTS[name]
    vocabulary = Vocabulary.from_preset(name)
    assert len(vocabulary) == classes
    assert vocabulary.num_synonyms == synonyms
    if things is not None:
        assert sum(vocabulary.is_thing) == things
    assert sum(vocabulary.seen_mask()) == seen


@pytest.mark.parametrize("name", PRESETS)
def test_preset_matches_official_order_synonyms_and_thing_split(name: str) -> None:
    synonyms_digest, things_digest = OFFICIAL_DIGESTS[name]
    vocabulary = Vocabulary.from_preset(name)
    assert _digest("\n".join(",".join(c.synonyms) for c in vocabulary.classes)) == synonyms_digest
    if things_digest is not None:
        thing_indices = [i for i, thing in enumerate(vocabulary.is_thing) if thing]
        assert _digest(repr(thing_indices)) == things_digest


@pytest.mark.parametrize(
    ("name", "index", "entry", "is_thing"),
    [
        (
            "coco",
            0,
            "person, child, girl, boy, woman, man, people, children, girls, boys, "
            "women, men, lady, guy, ladies, guys, clothes",
            True,
        ),
        ("coco", 79, "toothbrush, toothbrushes", True),
        ("coco", 80, "banner, banners", False),
        ("coco", 132, "rug", False),
        ("ade20k", 0, "wall, walls, brick wall, stone wall, interior wall", False),
        ("ade20k", 149, "flag, flags", True),
        ("ade20k_full", 846, "adding machine, totalizer, totaliser", True),
        ("cityscapes", 0, "road, railroad", False),
        ("cityscapes", 11, "person", True),
        ("mapillary", 64, "ego vehicle", False),
        ("pascal_context", 58, "wood piece", True),
        ("pascal_context_full", 0, "accordion", True),
        ("pascal_voc", 20, "tvmonitor, monitor, tv", True),
        ("lvis", 0, "aerosol can, spray can", True),
        ("lvis", 1202, "zucchini, courgette", True),
    ],
)
def test_preset_spot_checks(name: str, index: int, entry: str, is_thing: bool) -> None:
    vocabulary = Vocabulary.from_preset(name)
    assert vocabulary.entries[index] == entry
    assert vocabulary.names[index] == entry.split(", ")[0]
    assert vocabulary.is_thing[index] is is_thing


def test_voc_background_keeps_its_74_synonyms_including_repeats() -> None:
    background = Vocabulary.from_preset("pascal_voc").classes[0]
    assert background.name == "background" and not background.is_thing
    assert len(background.synonyms) == 74
    assert background.synonyms.count("bag") == 2


def test_ade20k_full_keeps_its_official_repeated_names() -> None:
    vocabulary = Vocabulary.from_preset("ade20k_full")
    assert vocabulary.entries[49] == "pedestal"
    assert vocabulary.entries[313] == "pedestal, plinth, footstall"


@pytest.mark.parametrize("name", SEMANTIC_ONLY)
def test_semantic_only_presets_use_the_custom_class_kind_rule(name: str) -> None:
    vocabulary = Vocabulary.from_preset(name)
    assert [infer_is_thing(c.synonyms) for c in vocabulary.classes] == list(vocabulary.is_thing)
    assert 0 < sum(vocabulary.is_thing) < len(vocabulary)


def test_entries_use_official_synonym_split() -> None:
    vocabulary = Vocabulary.from_entries(["cup, mug,beaker", "chair"])
    assert vocabulary.classes[0].synonyms == ("cup", "mug", "beaker")
    assert vocabulary.names == ("cup", "chair")
    assert vocabulary.entries == ("cup, mug, beaker", "chair")


def test_entries_round_trip_with_kinds() -> None:
    vocabulary = Vocabulary.from_preset("cityscapes")
    again = Vocabulary.from_entries(vocabulary.entries, is_thing=vocabulary.is_thing)
    assert again.classes == vocabulary.classes


@pytest.mark.parametrize(
    ("entry", "is_thing"),
    [
        ("sky, clouds", False),  # coco stuff class
        ("wall", False),  # coco stuff synonym
        ("person", True),  # coco thing
        ("counter", False),  # stuff in coco, thing in ade20k: coco wins
        ("chest of drawers", True),  # only in ade20k, a thing there
        ("skyscraper", False),  # only in ade20k, stuff there
        ("robot arm", True),  # unknown: thing
        ("robot arm, wall", False),  # first known synonym decides
    ],
)
def test_untagged_kind_follows_first_known_synonym(entry: str, is_thing: bool) -> None:
    assert parse_entry(entry).is_thing is is_thing


def test_kind_tag_states_the_kind_and_is_not_a_synonym() -> None:
    vocabulary = Vocabulary.from_entries(["wall [thing]", "robot arm, manipulator  [STUFF] "])
    assert vocabulary.classes[0] == VocabularyClass(("wall",), True)
    assert vocabulary.classes[1] == VocabularyClass(("robot arm", "manipulator"), False)


def test_explicit_kinds_override_inference() -> None:
    vocabulary = Vocabulary.from_entries(["wall", "person"], is_thing=[True, False])
    assert vocabulary.is_thing == (True, False)


def test_seen_mask_is_exact_synonym_match_with_coco() -> None:
    vocabulary = Vocabulary.from_entries(["robot", "automobile, car", "Car", "cars "])
    assert vocabulary.seen_mask() == (False, True, False, True)


def test_vocabulary_is_immutable() -> None:
    vocabulary = Vocabulary.from_entries(["cat"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        vocabulary.classes = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        vocabulary.classes[0].is_thing = False  # type: ignore[misc]


@pytest.mark.parametrize(
    ("entries", "preset", "reason"),
    [
        ([], None, "empty vocabulary"),
        (None, "", "empty vocabulary"),
        (["cat", ""], None, "class 1: blank entry"),
        (["  [stuff]"], None, "class 0: blank entry"),
        (["cat, , dog"], None, "blank synonym (number 2)"),
        (["cat,"], None, "blank synonym (number 2)"),
        (
            ["cat", "dog", "cat, kitty", "dog"],
            None,
            "duplicate class names: 'cat' (classes 0 and 2), 'dog' (classes 1 and 3)",
        ),
        (["x" * (MAX_ENTRY_CHARS + 1)], None, f"(limit {MAX_ENTRY_CHARS})"),
        ([f"c{i}" for i in range(MAX_CLASSES + 1)], None, f"at most {MAX_CLASSES}"),
        (None, "ade21k", "unknown preset 'ade21k'; known presets: coco, ade20k, ade20k_full"),
        (["cat"], "coco", "either classes or a preset, not both"),
        ("cat, dog", None, "not a single string"),
        ([3], None, "is not a string"),
    ],
)
def test_invalid_requests_say_why(entries, preset, reason: str) -> None:
    with pytest.raises(VocabularyError) as error:
        Vocabulary.from_request(entries, preset)
    assert reason in str(error.value)
    assert isinstance(error.value, ValueError)


# Names that differ only in what CLIP's tokenizer drops: case, runs of whitespace, spacing around
# punctuation, HTML escapes.
READ_ALIKE = [("Cat", "cat"), ("ice  cream", "ice cream"), ("T-shirt", "t - shirt"),
              ("fish &amp; chips", "fish & chips")]
READ_APART = [("cat", "cats"), ("ice cream", "icecream"), ("café", "cafe")]


def prompt_tokens(name: str) -> torch.Tensor:
    """The token ids the deployed model's text tower gets for ``name`` in every template."""
    tokenizer = open_clip.get_tokenizer("convnext_large_d_320")
    return tokenizer([template.format(name) for template in TEMPLATES])


@pytest.mark.parametrize(("first", "second"), READ_ALIKE)
def test_names_clip_reads_alike_are_refused_naming_both(first: str, second: str) -> None:
    assert torch.equal(prompt_tokens(first), prompt_tokens(second))  # identical embeddings
    with pytest.raises(VocabularyError) as error:
        Vocabulary.from_entries(["dog", first, f"{second}, kitty"])
    assert str(error.value) == (
        "class names CLIP's tokenizer reads as the same text (it lower-cases, and normalises "
        f"spacing and HTML escapes): {first!r} (class 1) and {second!r} (class 2); the two "
        "names of a pair get the same embedding, so only one could ever be predicted: keep one "
        "of each pair")


@pytest.mark.parametrize(("first", "second"), READ_APART)
def test_names_clip_reads_apart_are_separate_classes(first: str, second: str) -> None:
    assert not torch.equal(prompt_tokens(first), prompt_tokens(second))
    assert Vocabulary.from_entries([first, second]).names == (first, second)


def test_exact_and_near_duplicate_names_are_reported_together() -> None:
    with pytest.raises(VocabularyError) as error:
        Vocabulary.from_entries(["cat", "Cat", "cat"])
    assert str(error.value).startswith(
        "duplicate class names: 'cat' (classes 0 and 2); class names CLIP's tokenizer reads as "
        "the same text (it lower-cases, and normalises spacing and HTML escapes): 'cat' (class 0)"
        " and 'Cat' (class 1); ")


def test_entry_length_is_measured_as_sent() -> None:
    entry = ",".join(f"{i:03d}" for i in range(250)) + "x"  # 250 synonyms, no spaces
    assert len(entry) == MAX_ENTRY_CHARS
    assert len(Vocabulary.from_entries([entry]).classes[0].synonyms) == 250
    with pytest.raises(VocabularyError) as error:
        Vocabulary.from_entries([entry + "y"])
    assert str(error.value) == (f"class 0: entry {entry[:40]!r}... is {MAX_ENTRY_CHARS + 1} "
                                f"characters long (limit {MAX_ENTRY_CHARS})")


def test_tag_contradicting_stated_kind_is_rejected() -> None:
    with pytest.raises(VocabularyError, match="tagged stuff"):
        Vocabulary.from_entries(["wall [stuff]"], is_thing=[True])


def test_kind_count_must_match_classes() -> None:
    with pytest.raises(VocabularyError, match="1 thing/stuff flags given for 2 classes"):
        Vocabulary.from_entries(["a", "b"], is_thing=[True])


def test_largest_allowed_vocabulary_is_accepted() -> None:
    assert len(Vocabulary.from_entries([f"c{i}" for i in range(MAX_CLASSES)])) == MAX_CLASSES


def test_only_presets_may_repeat_names() -> None:
    repeated = Vocabulary.from_preset("ade20k_full").classes
    with pytest.raises(VocabularyError, match="'pedestal' \\(classes 49 and 313\\)"):
        Vocabulary(repeated)
    with pytest.raises(VocabularyError, match="unknown preset"):
        Vocabulary(repeated, preset="mine")


class FakeEmbedder:
    """Stands in for TextEmbedder: a 'classifier' that records the vocabulary it was built for."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()
        self.fail = False

    def classifier(self, vocabulary: Vocabulary):
        self.calls += 1
        self.started.set()
        self.release.wait(timeout=10)
        if self.fail:
            raise RuntimeError("out of memory")
        return ("classifier for", vocabulary.names)


def swap(active: ActiveVocabulary, entries: list[str] | None = None, preset: str | None = None
         ) -> VocabularyState | VocabularyError:
    """A SetVocabulary request as the node makes it, waited on: the state or the error."""
    outcomes: queue.Queue = queue.Queue()
    active.swap_in_background(lambda: Vocabulary.from_request(entries, preset), outcomes.put)
    return outcomes.get(timeout=10)


def test_swap_replaces_vocabulary_classifier_and_version_together() -> None:
    active = ActiveVocabulary(FakeEmbedder(), Vocabulary.from_entries(["cat"]))
    seen_by_listener = []
    active.add_listener(seen_by_listener.append)
    assert active.current.version == 1

    state = swap(active, ["dog", "grass"])
    assert state is active.current
    assert state.version == 2
    assert state.vocabulary.names == ("dog", "grass")
    assert state.classifier == ("classifier for", ("dog", "grass"))
    assert seen_by_listener == [state]

    assert swap(active, preset="cityscapes").version == 3
    assert len(active.current.vocabulary) == 19


@pytest.mark.parametrize(
    ("entries", "preset", "fail_encoding"),
    [(["cat", "cat"], None, False), (None, "nope", False), (["dog"], None, True)],
)
def test_failed_swap_leaves_old_state(entries, preset, fail_encoding: bool) -> None:
    embedder = FakeEmbedder()
    active = ActiveVocabulary(embedder, Vocabulary.from_entries(["cat"]))
    notified = []
    active.add_listener(notified.append)
    before = active.current
    embedder.fail = fail_encoding
    assert isinstance(swap(active, entries, preset), VocabularyError)
    assert active.current is before
    assert notified == []
    embedder.fail = False
    assert swap(active, ["bird"]).version == before.version + 1


def test_readers_see_the_old_snapshot_while_a_swap_encodes() -> None:
    embedder = FakeEmbedder()
    active = ActiveVocabulary(embedder, Vocabulary.from_entries(["cat"]))
    before = active.current
    embedder.release.clear()
    embedder.started.clear()
    outcomes: queue.Queue = queue.Queue()
    active.swap_in_background(lambda: Vocabulary.from_entries(["dog"]), outcomes.put)
    assert embedder.started.wait(timeout=10)
    # Encoding is in progress: the frame loop still reads the complete old state, unblocked.
    assert active.current is before
    embedder.release.set()
    assert outcomes.get(timeout=10) is active.current
    assert active.current.version == 2 and active.current.vocabulary.names == ("dog",)


def test_a_failing_listener_does_not_undo_the_swap() -> None:
    active = ActiveVocabulary(FakeEmbedder(), Vocabulary.from_entries(["cat"]))
    active.add_listener(lambda state: 1 / 0)
    assert swap(active, ["dog"]).version == 2
    assert active.current.vocabulary.names == ("dog",)


def test_background_swap_answers_through_done_and_refuses_a_second_one_as_busy() -> None:
    embedder = FakeEmbedder()
    active = ActiveVocabulary(embedder, Vocabulary.from_entries(["cat"]))
    outcomes: queue.Queue = queue.Queue()
    embedder.release.clear()
    embedder.started.clear()

    active.swap_in_background(lambda: Vocabulary.from_entries(["dog"]), outcomes.put, "dogs")
    assert embedder.started.wait(timeout=10) and active.swapping
    with pytest.raises(VocabularyBusyError, match=r"busy: still encoding dogs, requested \d+ s"):
        active.swap_in_background(lambda: Vocabulary.from_preset("coco"), outcomes.put)
    assert outcomes.empty() and active.current.version == 1  # the caller never waited

    embedder.release.set()
    state = outcomes.get(timeout=10)
    assert state is active.current and state.vocabulary.names == ("dog",)
    assert not active.swapping

    active.swap_in_background(lambda: Vocabulary.from_entries(["a", "a"]), outcomes.put)
    error = outcomes.get(timeout=10)
    assert isinstance(error, VocabularyError) and "duplicate class names" in str(error)
    assert active.current is state and not active.swapping
