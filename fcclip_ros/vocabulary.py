"""The open vocabulary: which classes the segmenter looks for, their synonyms and thing/stuff kinds.

Entry syntax (SetVocabulary service, ``vocabulary`` parameter, CLI): ``"name"`` or
``"name, synonym, ..."``, optionally ending in a kind tag ``[thing]`` or ``[stuff]``, e.g.
``"sky, clouds [stuff]"``. Synonyms are split as the official code splits them (``", "`` becomes
``","``, then split on ``","``); whitespace around a synonym is dropped. The first synonym is the
display name. Without a tag, a class takes the kind of its first synonym that a class of the
``coco`` preset lists, or failing that a class of the ``ade20k`` preset (the two official
panoptic vocabularies; the first class listing it wins); a class none of whose synonyms they
list is a thing. The semantic-only presets (``ade20k_full``, ``pascal_context``,
``pascal_context_full``, ``pascal_voc``) use that same rule, ``lvis`` is all things as in the
official demo, the others carry the official flags.

A class is *seen* (trained on) when one of its synonyms is exactly a synonym of the ``coco``
preset, FC-CLIP's training vocabulary; the geometric ensemble weighs seen and unseen classes
differently.

Vocabulary control (``VocabularySpec``): *negative* classes are encoded like classes and compete
in classification, but what they win is never reported (their pixels are unlabeled); a *class
threshold* replaces the global object_mask_threshold for one class (0: the global one). On the node
and the CLI a threshold is written ``NAME=VALUE`` with the class's name (its first synonym); the
service takes a list aligned with the classes.

``ActiveVocabulary`` holds the vocabulary in force as one immutable snapshot, so a frame loop reads
classes, negatives, thresholds, embeddings, seen mask and version together without taking a lock.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from fcclip_ros.model.classification import TextClassifier

logger = logging.getLogger(__name__)

PRESETS: tuple[str, ...] = (
    "coco",
    "ade20k",
    "ade20k_full",
    "cityscapes",
    "mapillary",
    "pascal_context",
    "pascal_context_full",
    "pascal_voc",
    "lvis",
)
MAX_CLASSES = 65534  # class ids must stay below the labels image's UNLABELED value (65535)
MAX_ENTRY_CHARS = 1000  # twice the longest official entry (PASCAL VOC's background, 492)

_KIND_TAG = re.compile(r"\s*\[(thing|stuff)\]\s*$", re.IGNORECASE)
_PRESET_KINDS = {"thing": True, "stuff": False}


class VocabularyError(ValueError):
    """A vocabulary that cannot be used; the message says exactly why."""


class VocabularyBusyError(VocabularyError):
    """A swap was asked for while another vocabulary is still being encoded."""


@dataclass(frozen=True)
class VocabularyClass:
    """One class: its synonyms (the first is its name) and whether it is a countable thing."""

    synonyms: tuple[str, ...]
    is_thing: bool

    @property
    def name(self) -> str:
        return self.synonyms[0]

    @property
    def entry(self) -> str:
        """The class written as an entry, "name, synonym, ..."."""
        return ", ".join(self.synonyms)


def split_synonyms(text: str) -> tuple[str, ...]:
    """The official split of "a, b,c" into synonyms, with surrounding whitespace dropped."""
    return tuple(synonym.strip() for synonym in text.replace(", ", ",").split(","))


def parse_entry(entry: str, is_thing: bool | None = None) -> VocabularyClass:
    """Parse one entry; ``is_thing`` states the kind (a ``[thing]``/``[stuff]`` tag must agree)."""
    if not isinstance(entry, str):
        raise VocabularyError(f"entry {entry!r} is not a string")
    if len(entry) > MAX_ENTRY_CHARS:
        raise VocabularyError(
            f"entry {entry[:40]!r}... is {len(entry)} characters long (limit {MAX_ENTRY_CHARS})"
        )
    tag = _KIND_TAG.search(entry)
    if tag is not None:
        tagged = _PRESET_KINDS[tag.group(1).lower()]
        if is_thing is not None and is_thing != tagged:
            raise VocabularyError(f"entry {entry!r} is tagged {tag.group(1)} but stated otherwise")
        is_thing, entry = tagged, entry[: tag.start()]
    if not entry.strip():
        raise VocabularyError("blank entry")
    synonyms = split_synonyms(entry)
    if "" in synonyms:
        raise VocabularyError(
            f"entry {entry!r} has a blank synonym (number {synonyms.index('') + 1})"
        )
    return VocabularyClass(synonyms, infer_is_thing(synonyms) if is_thing is None else is_thing)


def infer_is_thing(synonyms: Sequence[str]) -> bool:
    """The kind of an untagged class: see the module docstring."""
    kinds = _reference_kinds()
    return next((kinds[s] for s in synonyms if s in kinds), True)


@dataclass(frozen=True)
class Vocabulary:
    """An immutable, validated list of classes; class id i is ``classes[i]``.

    ``preset`` names the built-in list it came from; those are kept verbatim, so only they may
    repeat a name (the official ADE-847 list has e.g. both "pot" and "pot, flowerpot"). Names
    count as repeated when CLIP's tokenizer reads them alike ("Cat", "cat"): they would get the
    same embedding.
    """

    classes: tuple[VocabularyClass, ...]
    preset: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.preset is not None and self.preset not in PRESETS:
            raise _unknown_preset(self.preset)
        _validate(self.classes, allow_duplicate_names=self.preset is not None)

    @classmethod
    def from_entries(
        cls, entries: Sequence[str], is_thing: Sequence[bool] | None = None
    ) -> Vocabulary:
        """Parse user entries; ``is_thing`` optionally states every class's kind."""
        if isinstance(entries, str):
            raise VocabularyError("classes must be a list of entries, not a single string")
        entries = list(entries)
        _check_count(len(entries))
        if is_thing is not None and len(is_thing) != len(entries):
            raise VocabularyError(
                f"{len(is_thing)} thing/stuff flags given for {len(entries)} classes"
            )
        kinds = [None] * len(entries) if is_thing is None else [bool(k) for k in is_thing]
        classes = []
        for index, (entry, kind) in enumerate(zip(entries, kinds, strict=True)):
            try:
                classes.append(parse_entry(entry, kind))
            except VocabularyError as error:
                raise VocabularyError(f"class {index}: {error}") from None
        return cls(tuple(classes))

    @classmethod
    def from_preset(cls, name: str) -> Vocabulary:
        """One of the built-in official vocabularies (see ``PRESETS``)."""
        if name not in PRESETS:
            raise _unknown_preset(name)
        return _load_preset(name)

    @classmethod
    def from_request(
        cls, entries: Sequence[str] | None = None, preset: str | None = None
    ) -> Vocabulary:
        """The vocabulary a SetVocabulary request asks for: classes or a preset, not both."""
        if entries and preset:
            raise VocabularyError("give either classes or a preset, not both")
        if preset:
            return cls.from_preset(preset)
        return cls.from_entries(entries or [])

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def entries(self) -> tuple[str, ...]:
        """Every class as "name, synonym, ..." (the Vocabulary message's ``classes``)."""
        return tuple(c.entry for c in self.classes)

    @property
    def is_thing(self) -> tuple[bool, ...]:
        return tuple(c.is_thing for c in self.classes)

    @property
    def num_synonyms(self) -> int:
        return sum(len(c.synonyms) for c in self.classes)

    def seen_mask(self) -> tuple[bool, ...]:
        """Per class: shares a synonym with the COCO training vocabulary (exact string match)."""
        training = _training_synonyms()
        return tuple(not training.isdisjoint(c.synonyms) for c in self.classes)

    def summary(self) -> str:
        """One line for logs and service replies."""
        things = sum(self.is_thing)
        source = f"preset {self.preset}" if self.preset else "custom"
        return (
            f"{len(self)} classes ({source}): {things} things, {len(self) - things} stuff, "
            f"{self.num_synonyms} synonyms, {sum(self.seen_mask())} seen in training"
        )


@dataclass(frozen=True)
class VocabularySpec:
    """What frames are segmented with: the classes, the negative classes and the per-class
    thresholds, validated together so that a swap installs all three or none.

    ``negatives`` (None: none) are classified beside the classes, after them, but never reported.
    ``thresholds`` is empty (every class uses the global threshold) or one value in [0, 1] per
    class, where 0 means the global threshold.
    """

    vocabulary: Vocabulary
    negatives: Vocabulary | None = None
    thresholds: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        if self.thresholds and len(self.thresholds) != len(self.vocabulary):
            raise VocabularyError(
                f"{len(self.thresholds)} class thresholds given for {len(self.vocabulary)} "
                "classes: give one per class (0 = the global threshold), or none"
            )
        for index, value in enumerate(self.thresholds):
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise VocabularyError(
                    f"class threshold {value:g} of class {index} "
                    f"({self.vocabulary.names[index]!r}) is outside 0..1"
                )
        if not any(self.thresholds):  # all global: the same as none
            object.__setattr__(self, "thresholds", ())
        if self.negatives is not None:
            _check_count(len(self.vocabulary) + len(self.negatives))
            _refuse_negatives_among_classes(self.vocabulary, self.negatives)

    @classmethod
    def from_request(
        cls,
        entries: Sequence[str] | None = None,
        preset: str | None = None,
        negatives: Sequence[str] = (),
        thresholds: Sequence[float] = (),
    ) -> VocabularySpec:
        """A SetVocabulary request: classes or a preset, negative entries and aligned thresholds
        (all zero, like an empty list, means the global threshold for every class)."""
        vocabulary = Vocabulary.from_request(entries, preset)
        return cls(vocabulary, negative_vocabulary(negatives), tuple(thresholds))

    @classmethod
    def from_settings(
        cls,
        entries: Sequence[str],
        preset: str,
        negatives: Sequence[str],
        threshold_entries: Sequence[str],
    ) -> VocabularySpec:
        """The node parameters or CLI flags: a non-empty class list wins over the preset;
        thresholds are "NAME=VALUE" entries."""
        vocabulary = Vocabulary.from_request(entries or None, None if entries else preset)
        return cls(vocabulary, negative_vocabulary(negatives),
                   thresholds_by_name(vocabulary, threshold_entries))

    @property
    def threshold_entries(self) -> tuple[str, ...]:
        """The thresholds as "NAME=VALUE" entries, one per class with its own threshold."""
        return tuple(f"{name}={value:g}" for name, value in zip(
            self.vocabulary.names, self.aligned_thresholds, strict=True) if value)

    @property
    def negative_entries(self) -> tuple[str, ...]:
        return () if self.negatives is None else self.negatives.entries

    @property
    def is_thing(self) -> tuple[bool, ...]:
        """Kinds of every classified class: the classes, then the negatives."""
        return self.vocabulary.is_thing + (() if self.negatives is None
                                           else self.negatives.is_thing)

    @property
    def aligned_thresholds(self) -> tuple[float, ...]:
        """One threshold per class, 0 where the global one applies."""
        return self.thresholds or (0.0,) * len(self.vocabulary)

    def summary(self) -> str:
        """The vocabulary's summary line, with the negatives and thresholds."""
        extra = []
        if self.negatives is not None:
            extra.append(f"{len(self.negatives)} negative classes")
        if self.thresholds:
            extra.append(f"{sum(1 for t in self.thresholds if t)} class thresholds")
        return ", ".join((self.vocabulary.summary(), *extra))


def negative_vocabulary(entries: Sequence[str]) -> Vocabulary | None:
    """Negative entries parsed like classes (synonyms, kind tags, no repeats); None for none."""
    if isinstance(entries, str):
        raise VocabularyError("negative classes must be a list of entries, not a single string")
    if not entries:
        return None
    try:
        return Vocabulary.from_entries(entries)
    except VocabularyError as error:
        raise VocabularyError(f"negative classes: {error}") from None


def thresholds_by_name(vocabulary: Vocabulary, entries: Sequence[str]) -> tuple[float, ...]:
    """"NAME=VALUE" entries -> one threshold per class (0: the global one); empty for none.

    NAME is a class's name (its first synonym; a preset's name shared by several classes sets
    them all), VALUE a probability in [0, 1]. Refuses malformed entries, unknown names and a name
    given twice.
    """
    if isinstance(entries, str):
        raise VocabularyError("class thresholds must be a list of NAME=VALUE entries")
    if not entries:
        return ()
    classes_of_name: dict[str, list[int]] = {}
    for index, name in enumerate(vocabulary.names):
        classes_of_name.setdefault(name, []).append(index)
    thresholds = [0.0] * len(vocabulary)
    given: set[str] = set()
    for entry in entries:
        name, _, text = entry.rpartition("=")
        name = name.strip()
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not name or not math.isfinite(value):
            raise VocabularyError(f"class threshold {entry!r} is not NAME=VALUE, e.g. person=0.5")
        if name not in classes_of_name:
            known = ", ".join(repr(n) for n in vocabulary.names[:10])
            more = ", ..." if len(vocabulary) > 10 else ""
            raise VocabularyError(f"class threshold {entry!r}: {name!r} is not a class name of "
                                  f"the vocabulary ({known}{more})")
        if name in given:
            raise VocabularyError(f"class threshold {entry!r}: {name!r} is given twice")
        if not 0.0 <= value <= 1.0:
            raise VocabularyError(f"class threshold {entry!r}: {value:g} is outside 0..1")
        given.add(name)
        for index in classes_of_name[name]:
            thresholds[index] = value
    return tuple(thresholds)


@dataclass(frozen=True)
class VocabularyState:
    """Everything a frame needs about the vocabulary, replaced as a whole on every swap.

    The classifier scores the classes, then the negative classes.
    """

    version: int
    spec: VocabularySpec
    classifier: TextClassifier

    @property
    def vocabulary(self) -> Vocabulary:
        return self.spec.vocabulary


class ClassifierSource(Protocol):
    """What ActiveVocabulary needs from a text embedder (TextEmbedder, or a stand-in in tests)."""

    def classifier(self, vocabulary: Vocabulary) -> TextClassifier: ...


def _as_spec(vocabulary: Vocabulary | VocabularySpec) -> VocabularySpec:
    return vocabulary if isinstance(vocabulary, VocabularySpec) else VocabularySpec(vocabulary)


class ActiveVocabulary:
    """The vocabulary in force; frame loops read ``current``, services ``swap_in_background``.

    Readers take no lock: ``current`` is one reference to an immutable snapshot, replaced in a
    single assignment after the new classifier is fully built. Swaps are serialised among
    themselves, so versions increase by one per successful swap and listeners see them in order.
    """

    def __init__(self, embedder: ClassifierSource, initial: Vocabulary | VocabularySpec) -> None:
        self._embedder = embedder
        self._swap_lock = threading.Lock()
        self._background_lock = threading.Lock()
        self._background: tuple[str, float] | None = None  # (what, since) while encoding
        self._listeners: list[Callable[[VocabularyState], None]] = []
        initial = _as_spec(initial)
        self._state = VocabularyState(1, initial, self._classifier(initial))

    @property
    def current(self) -> VocabularyState:
        return self._state

    def add_listener(self, listener: Callable[[VocabularyState], None]) -> None:
        """Call ``listener(state)`` after every successful swap (e.g. to republish the topic)."""
        self._listeners.append(listener)

    @property
    def swapping(self) -> bool:
        """True while a background swap is validating or encoding."""
        return self._background is not None

    def swap_in_background(
        self,
        make: Callable[[], Vocabulary | VocabularySpec],
        done: Callable[[VocabularyState | VocabularyError], None],
        description: str = "a vocabulary",
    ) -> None:
        """Build (``make()``, which validates), encode and install on a thread of its own, then
        call ``done`` with the new state or the error: the caller, e.g. a ROS executor thread,
        never waits for the text encoder, which takes minutes for thousands of new classes on a
        CPU. One at a time: a request while one runs is refused at once (VocabularyBusyError).
        """
        with self._background_lock:
            if self._background is not None:
                what, since = self._background
                raise VocabularyBusyError(
                    f"busy: still encoding {what}, requested {time.monotonic() - since:.0f} s ago;"
                    " the vocabulary in force is unchanged, try again when that swap is done"
                )
            self._background = (description, time.monotonic())
        threading.Thread(
            target=self._swap_and_report, args=(make, done), name="fcclip-vocabulary", daemon=True
        ).start()

    def _swap_and_report(
        self,
        make: Callable[[], Vocabulary | VocabularySpec],
        done: Callable[[VocabularyState | VocabularyError], None],
    ) -> None:
        try:
            outcome: VocabularyState | VocabularyError = self.replace(make())
        except VocabularyError as error:
            outcome = error
        except Exception as error:  # whatever happened, the caller gets an answer
            logger.exception("vocabulary swap failed")
            outcome = VocabularyError(f"the swap failed: {error!r}")
        finally:
            with self._background_lock:
                self._background = None
        done(outcome)

    def replace(self, vocabulary: Vocabulary | VocabularySpec) -> VocabularyState:
        """Encode and install an already validated vocabulary (with its negatives and thresholds,
        all or nothing); on any error the old one stays."""
        spec = _as_spec(vocabulary)
        with self._swap_lock:
            try:
                classifier = self._classifier(spec)
            except Exception as error:
                raise VocabularyError(f"could not encode the vocabulary: {error}") from error
            self._state = VocabularyState(self._state.version + 1, spec, classifier)
            for listener in self._listeners:
                try:
                    listener(self._state)
                except Exception:
                    logger.exception("vocabulary listener %r failed", listener)
            return self._state

    def _classifier(self, spec: VocabularySpec) -> TextClassifier:
        """The classes' classifier, with the negatives' rows after them: each synonym is
        encoded and cached like any other."""
        classifier = self._embedder.classifier(spec.vocabulary)
        if spec.negatives is None:
            return classifier
        return classifier.followed_by(self._embedder.classifier(spec.negatives))


def _validate(classes: tuple[VocabularyClass, ...], allow_duplicate_names: bool) -> None:
    _check_count(len(classes))
    for index, c in enumerate(classes):
        if not c.synonyms or any(not s.strip() for s in c.synonyms):
            raise VocabularyError(f"class {index} has a blank synonym: {c.synonyms!r}")
    if not allow_duplicate_names:
        _refuse_duplicate_names(classes)


def _refuse_duplicate_names(classes: tuple[VocabularyClass, ...]) -> None:
    """Refuse names CLIP's text tower gets as the same tokens: one embedding, one possible winner.

    Names are compared as token ids of open_clip's CLIP tokenizer, the one every supported model
    uses; it drops case, runs of whitespace, spacing around punctuation and HTML escapes. A fresh
    tokenizer per check, because it keeps every word it has seen.
    """
    from open_clip.tokenizer import SimpleTokenizer  # costs seconds; presets never get here

    tokenizer = SimpleTokenizer()
    first_index: dict[tuple[int, ...], int] = {}
    same, alike = [], []
    for index, name in enumerate(c.name for c in classes):
        first = first_index.setdefault(tuple(tokenizer.encode(name)), index)
        if first == index:
            continue
        if classes[first].name == name:
            same.append(f"{name!r} (classes {first} and {index})")
        else:
            alike.append(f"{classes[first].name!r} (class {first}) and {name!r} (class {index})")
    problems = []
    if same:
        problems.append("duplicate class names: " + ", ".join(same))
    if alike:
        problems.append(
            "class names CLIP's tokenizer reads as the same text (it lower-cases, and normalises "
            "spacing and HTML escapes): "
            + ", ".join(alike)
            + "; the two names of a pair get the same embedding, so only one could ever be"
            " predicted: keep one of each pair"
        )
    if problems:
        raise VocabularyError("; ".join(problems))


def _refuse_negatives_among_classes(vocabulary: Vocabulary, negatives: Vocabulary) -> None:
    """A negative sharing a synonym with a class (as CLIP's tokenizer reads them) would tie with
    it wherever that synonym scores best: it cannot be both wanted and unwanted."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    class_of_synonym = {tuple(tokenizer.encode(s)): index
                        for index, c in enumerate(vocabulary.classes) for s in c.synonyms}
    for index, negative in enumerate(negatives.classes):
        for synonym in negative.synonyms:
            found = class_of_synonym.get(tuple(tokenizer.encode(synonym)))
            if found is not None:
                raise VocabularyError(
                    f"negative class {index} ({negative.entry!r}) is also a class: {synonym!r} "
                    f"is a synonym of class {found} ({vocabulary.classes[found].entry!r})"
                )


def _check_count(count: int) -> None:
    if count == 0:
        raise VocabularyError("empty vocabulary: give at least one class or a preset")
    if count > MAX_CLASSES:
        raise VocabularyError(f"{count} classes given; at most {MAX_CLASSES} fit the labels image")


def _unknown_preset(name: str) -> VocabularyError:
    return VocabularyError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")


@cache
def _load_preset(name: str) -> Vocabulary:
    """Read presets/<name>.txt: "thing|stuff<TAB>synonyms" lines, '#' comment lines."""
    text = (resources.files("fcclip_ros") / "presets" / f"{name}.txt").read_text(encoding="utf-8")
    classes = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            kind, synonyms = line.split("\t")
            classes.append(VocabularyClass(split_synonyms(synonyms), _PRESET_KINDS[kind]))
    return Vocabulary(tuple(classes), preset=name)


@cache
def _training_synonyms() -> frozenset[str]:
    return frozenset(s for c in _load_preset("coco").classes for s in c.synonyms)


@cache
def _reference_kinds() -> dict[str, bool]:
    """Synonym -> is_thing from the official panoptic vocabularies, COCO first."""
    kinds: dict[str, bool] = {}
    for preset in ("coco", "ade20k"):
        for c in _load_preset(preset).classes:
            for synonym in c.synonyms:
                kinds.setdefault(synonym, c.is_thing)
    return kinds
