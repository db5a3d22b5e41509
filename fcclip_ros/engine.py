"""The engine facade: an RGB image in, FC-CLIP's segmentation out. ROS-free.

It owns the network, the vocabulary in force and the thresholds; the ROS node and the CLI are thin
layers over `Engine.segment` / `Engine.segment_batch`. On request a result carries each segment's
CLIP embedding; `Engine.encode_texts` and `rank_segments` then answer text queries about it
without running the network again. The network forward runs in eager PyTorch or, with
`backend`, on an exported artifact in ONNX Runtime or OpenVINO (fcclip_ros.backends); everything
around it is shared.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch

from fcclip_ros.backends import (
    BACKENDS,
    ExportedNetwork,
    OnnxRuntimeNetwork,
    OpenVINONetwork,
)
from fcclip_ros.cache import default_cache_dir
from fcclip_ros.export import ExportError, weights_fingerprint
from fcclip_ros.image_conversion import check_pixel_count
from fcclip_ros.model.build import RANDOM, BuildError, build_fcclip, checkpoint_file, clip_file
from fcclip_ros.model.classification import TextClassifier
from fcclip_ros.model.config import CUSTOM_CLIP_ARCHITECTURES, VARIANTS, FCCLIPConfig
from fcclip_ros.postprocess import (
    QueryMasks,
    panoptic_inference,
    semantic_inference,
    semantic_to_segmentation,
    to_segmentation,
)
from fcclip_ros.preprocess import padded_input_size, prepare_batch
from fcclip_ros.result import Segmentation
from fcclip_ros.settings import MODES, PRECISIONS, default
from fcclip_ros.text_embeddings import TextEmbedder, TextQueries
from fcclip_ros.vocabulary import (
    ActiveVocabulary,
    VocabularyError,
    VocabularySpec,
    VocabularyState,
)

logger = logging.getLogger(__name__)

AUTO = "auto"


class EngineError(RuntimeError):
    """The engine cannot be built or cannot run as configured; the message says why."""


class EngineInterruptedError(EngineError):
    """`Engine.interrupt()` was called: the frame in flight was dropped between two blocks."""


@dataclass(frozen=True)
class EngineConfig:
    """How to build an engine. The fields are node parameters, with their defaults from
    fcclip_ros.settings (which says what each means), except the seed of random weights."""

    model: str = default("model")  # a key of fcclip_ros.model.config.VARIANTS
    weights: str = default("weights")
    clip_weights: str = default("clip_weights")
    device: str = default("device")
    precision: str = default("precision")
    mode: str = default("mode")
    input_short_side: int = default("input_short_side")
    max_long_side: int = default("max_long_side")
    object_mask_threshold: float = default("object_mask_threshold")
    overlap_threshold: float = default("overlap_threshold")
    cache_dir: str | None = None  # None (or the parameter's ""): the default cache
    vocabulary: tuple[str, ...] = default("vocabulary")  # empty: the preset
    vocabulary_preset: str = default("vocabulary_preset")
    negative_vocabulary: tuple[str, ...] = default("negative_vocabulary")
    class_thresholds: tuple[str, ...] = default("class_thresholds")  # "NAME=VALUE" entries
    seed: int = 0  # for random weights
    max_input_pixels: int = default("max_input_pixels")
    backend: str = default("backend")
    onnxruntime_providers: tuple[str, ...] = default("onnxruntime_providers")

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> EngineConfig:
        """The config for setting values named as the node's parameters (the node's, or the
        CLI's flags): other names are ignored and missing ones keep their defaults, so node and
        CLI build the engine the same way. Lists become tuples; "" for cache_dir is None."""
        names = {field.name for field in fields(cls)}
        given = {name: tuple(value) if isinstance(value, list) else value
                 for name, value in values.items() if name in names}
        return cls(**given | {"cache_dir": given.get("cache_dir") or None})


def resolve_device(name: str) -> torch.device:
    """"auto" picks the first GPU when there is one; an unusable choice is an EngineError."""
    if name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise EngineError(f"device {name!r} is not a torch device ({error})") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(f"device {name!r} asked for, but CUDA is not available here")
        if (device.index or 0) >= torch.cuda.device_count():
            raise EngineError(f"device {name!r} asked for, but only "
                              f"{torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise EngineError(f"device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32 (the official numerics)."""
    if precision not in PRECISIONS:
        raise EngineError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == AUTO:
        return torch.float16 if device.type == "cuda" else None
    if precision == "fp16" and device.type == "cpu":
        raise EngineError("precision fp16 needs a CUDA device; on the CPU use fp32 or bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise EngineError("precision bf16 is not supported by this GPU; use fp16 or fp32")
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """CUDA convolutions and matrix products in true fp32 for the duration.

    PyTorch lets cuDNN run fp32 convolutions as TF32 by default (10-bit mantissa): on an H200
    that moved 1.3 % of rn50's panoptic pixels and changed the segments of 1 photo in 4 against
    the CPU; with TF32 off, 99.999 % and the same segments (bench/gpu_check.py). The flags are
    process-wide, so they are restored on exit; the engine's run lock keeps its own forwards
    from overlapping.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def resolved_settings(config: EngineConfig) -> dict[str, Any]:
    """The settings that decide an engine's results, with each "auto" resolved: the device, the
    precision, and the weight files (path and size). What a bag's --resume compares, checked
    without building the model; EngineError when one cannot be resolved."""
    variant = _check_config(config)
    device = _device(config)
    dtype = resolve_precision(config.precision, device)
    try:
        files = {"weights": checkpoint_file(variant, config.weights, config.cache_dir),
                 "clip_weights": clip_file(variant, config.clip_weights)}
    except BuildError as error:
        raise EngineError(str(error)) from error
    settings = {name: list(value) if isinstance(value, tuple) else value
                for name, value in asdict(config).items() if name != "cache_dir"}
    settings["device"] = str(device)
    settings["precision"] = {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    for name, path in files.items():
        settings[name] = RANDOM if path is None else f"{Path(path).resolve()} " \
            f"({os.path.getsize(path)} bytes)"
    return settings


def _device(config: EngineConfig) -> torch.device:
    """OpenVINO runs on the CPU whatever `device` says."""
    return resolve_device("cpu" if config.backend == "openvino" else config.device)


def _check_config(config: EngineConfig) -> FCCLIPConfig:
    if config.model not in VARIANTS:
        raise EngineError(f"model {config.model!r}: use one of {', '.join(VARIANTS)}")
    if config.mode not in MODES:
        raise EngineError(f"mode {config.mode!r}: use one of {', '.join(MODES)}")
    if config.input_short_side < 0 or config.max_long_side <= 0:
        raise EngineError("input_short_side must be >= 0 and max_long_side > 0, got "
                          f"{config.input_short_side} and {config.max_long_side}")
    _check_thresholds(config.object_mask_threshold, config.overlap_threshold)
    if config.max_input_pixels <= 0:
        raise EngineError(f"max_input_pixels must be > 0, got {config.max_input_pixels}")
    if config.backend not in BACKENDS:
        raise EngineError(f"backend {config.backend!r}: use one of {', '.join(BACKENDS)}")
    if config.backend == "openvino" and config.device not in (AUTO, "cpu"):
        raise EngineError(f"backend openvino runs on the CPU; device {config.device!r} asked for")
    return VARIANTS[config.model]


def _check_thresholds(object_mask_threshold: float, overlap_threshold: float) -> None:
    for name, value in (("object_mask_threshold", object_mask_threshold),
                        ("overlap_threshold", overlap_threshold)):
        if not 0.0 <= value <= 1.0:
            raise EngineError(f"{name} must lie in [0, 1], got {value}")


def _per_image(flag: bool | Sequence[bool], count: int, name: str) -> list[bool]:
    if isinstance(flag, bool):
        return [flag] * count
    flags = [bool(f) for f in flag]
    if len(flags) != count:
        raise EngineError(f"{name} has {len(flags)} entries for {count} images")
    return flags


def _stop_point(interrupted: threading.Event) -> None:
    if interrupted.is_set():
        raise EngineInterruptedError("the engine was interrupted (shutting down)")


def _add_stop_points(model: torch.nn.Module, interrupted: threading.Event) -> None:
    """A check before every block of every stage (each member of a Sequential or ModuleList), so
    that interrupt() ends even a multi-second CPU forward within one block's time."""
    def check(_module: torch.nn.Module, _inputs: tuple) -> None:
        _stop_point(interrupted)

    for container in model.modules():
        if isinstance(container, (torch.nn.Sequential, torch.nn.ModuleList)):
            for block in container:
                block.register_forward_pre_hook(check)


class Engine:
    """FC-CLIP with a swappable vocabulary. Thread-safe: one frame loop, any number of swappers."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        variant = _check_config(config)
        self.device = _device(config)
        self.autocast_dtype = resolve_precision(config.precision, self.device)
        self.mode = config.mode
        self._thresholds = (config.object_mask_threshold, config.overlap_threshold)

        try:
            built = build_fcclip(config.model, config.weights, config.clip_weights, self.device,
                                 config.cache_dir, config.seed)
        except BuildError as error:
            raise EngineError(str(error)) from error
        if (report := built.report) is not None:
            logger.info("loaded %s: %d head tensors, %d CLIP tensors; ignored %s",
                        report.path, report.head_keys, report.clip_keys,
                        ", ".join(report.ignored + report.unexpected) or "nothing")
        self.random_weights = built.random_weights
        if self.random_weights:
            logger.warning("FC-CLIP runs with RANDOM weights (weights=%s, clip_weights=%s): "
                           "masks and labels are meaningless", config.weights, config.clip_weights)
        self.model = built.model
        self._run_lock = threading.Lock()  # one forward at a time; swaps never take it
        self._interrupted = threading.Event()
        _add_stop_points(self.model, self._interrupted)
        self.exported: ExportedNetwork | None = None  # the network forward of other backends
        if config.backend != "torch":
            self.exported = self._exported_network(config)

        cache_dir = Path(config.cache_dir or default_cache_dir()) / "text_embeddings"
        name = variant.clip_model_name
        # Architectures of our own (the tiny test model) use CLIP's standard BPE tokenizer.
        tokenizer = (open_clip.tokenizer.SimpleTokenizer() if name in CUSTOM_CLIP_ARCHITECTURES
                     else open_clip.get_tokenizer(name))
        self.text_embedder = TextEmbedder(
            self.model.backbone.clip_model,
            tokenizer,
            variant.clip_model_name,
            cache_dir=cache_dir,
            device=self.device,
        )
        try:
            initial = VocabularySpec.from_settings(config.vocabulary, config.vocabulary_preset,
                                                   config.negative_vocabulary,
                                                   config.class_thresholds)
        except VocabularyError as error:
            raise EngineError(f"initial vocabulary: {error}") from error
        self.vocabulary = ActiveVocabulary(self.text_embedder, initial)
        # (version, thing flags, class thresholds) on the device, for the vocabulary in force
        self._class_tensors: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _exported_network(self, config: EngineConfig) -> ExportedNetwork:
        """The ONNX Runtime / OpenVINO forward; artifacts come from <cache_dir>/exported/."""
        precision = config.precision
        if precision == AUTO:
            precision = "fp32"  # the exported graphs are fp32; bf16 only when asked for
        common = dict(model=self.model, model_name=config.model,
                      fingerprint=weights_fingerprint(self.model),
                      cache_root=Path(config.cache_dir or default_cache_dir()) / "exported",
                      stop_point=lambda: _stop_point(self._interrupted))
        try:
            if config.backend == "openvino":
                network = OpenVINONetwork(**common, precision=precision,
                                          threads=torch.get_num_threads())
                logger.info("backend openvino: CPU, %s", "bf16 (native on this CPU)"
                            if precision == "bf16" else "f32")
                return network
            if precision != "fp32":
                raise EngineError(f"backend onnxruntime runs the fp32 graph; precision "
                                  f"{config.precision} is not offered (use auto or fp32)")
            providers = config.onnxruntime_providers or (
                ("CUDAExecutionProvider", "CPUExecutionProvider") if self.device.type == "cuda"
                else ())
            return OnnxRuntimeNetwork(**common, providers=providers,
                                      threads=torch.get_num_threads())
        except ExportError as error:
            raise EngineError(str(error)) from error

    def network_input_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(Hp, Wp) the network sees for (H, W) camera images: resized, then padded."""
        try:
            return padded_input_size(*image_size, self.config.input_short_side,
                                     self.config.max_long_side)
        except ValueError as error:
            raise EngineError(f"image size {image_size}: {error}") from error

    def prepare_backend(self, image_size: tuple[int, int]) -> Path | None:
        """Build or load now the exported network for (H, W) camera images, rather than on the
        first frame of that size; returns the artifact's folder (None for backend torch)."""
        if self.exported is None:
            return None
        try:
            return self.exported.prepare(self.network_input_size(image_size),
                                         self.vocabulary.current.classifier)
        except ExportError as error:
            raise EngineError(str(error)) from error

    def interrupt(self) -> None:
        """Stop the frame in flight at the next network block or post-processed image, and
        refuse later ones (EngineInterruptedError) until resume(): a prompt stop whatever the
        model's speed."""
        self._interrupted.set()
        if self.exported is not None:
            self.exported.cancel()

    def resume(self) -> None:
        """Segment again after interrupt()."""
        self._interrupted.clear()

    def set_thresholds(self, object_mask_threshold: float | None = None,
                       overlap_threshold: float | None = None) -> None:
        """Change the panoptic thresholds from the next frame on."""
        current = self._thresholds
        wanted = (current[0] if object_mask_threshold is None else float(object_mask_threshold),
                  current[1] if overlap_threshold is None else float(overlap_threshold))
        _check_thresholds(*wanted)
        self._thresholds = wanted

    @property
    def object_mask_threshold(self) -> float:
        """The global score threshold in force (LabelInfo.threshold)."""
        return self._thresholds[0]

    @property
    def embedding_dim(self) -> int:
        """Dimension of the segment and text embeddings (CLIP's joint space)."""
        return self.model.config.embed_dim

    def encode_texts(self, texts: Iterable[str]) -> TextQueries:
        """Embed query texts for `rank_segments` / `segment_scores` (fcclip_ros.text_embeddings).

        Each text is "name" or "name, synonym, ...", embedded with the vocabulary's prompt
        ensemble and cache, so a text seen before costs a lookup. Raises QueryError (a
        ValueError) for an empty list, a blank text or synonym, more than MAX_QUERY_TEXTS texts
        or MAX_QUERY_SYNONYMS synonyms, or a text over MAX_ENTRY_CHARS characters. Runs beside
        frames and vocabulary swaps: it never waits for a frame or for a swap's encoding. After
        interrupt(), a text not cached raises EngineInterruptedError, as a swap would.
        """
        return self.text_embedder.queries(texts)

    def segment(self, image_rgb: np.ndarray, with_confidence: bool = True,
                with_embeddings: bool = False) -> Segmentation:
        """Segment one (H, W, 3) uint8 RGB image (see segment_batch)."""
        return self.segment_batch([image_rgb], [with_confidence], [with_embeddings])[0]

    def segment_batch(self, images_rgb: Sequence[np.ndarray],
                      with_confidence: bool | Sequence[bool] = True,
                      with_embeddings: bool | Sequence[bool] = False) -> list[Segmentation]:
        """Segment images in one forward pass; all results refer to one vocabulary version.

        `with_confidence` / `with_embeddings` (for all images or per image) ask for the
        confidence map and for the segments' CLIP embeddings (`Segmentation.embeddings`); what
        is not asked for is not computed. Images over `max_input_pixels` are refused before any
        work: post-processing memory grows with the input's pixels (see fcclip_ros.postprocess),
        and so does the network's when input_short_side is 0.
        """
        with_confidence = _per_image(with_confidence, len(images_rgb), "with_confidence")
        with_embeddings = _per_image(with_embeddings, len(images_rgb), "with_embeddings")
        state = self.vocabulary.current  # a single snapshot: no frame mixes two vocabularies
        object_mask_threshold, overlap_threshold = self._thresholds
        images = list(images_rgb)
        try:
            for image in images:
                if isinstance(image, np.ndarray) and image.ndim >= 2:  # others: prepare_batch
                    check_pixel_count(image.shape[1], image.shape[0], self.config.max_input_pixels)
            batch = prepare_batch(images, self.config.input_short_side,
                                  self.config.max_long_side, self.device)
        except ValueError as error:
            raise EngineError(f"unusable image: {error}") from error
        with self._run_lock, torch.inference_mode():
            outputs = self.forward(batch.tensor, state.classifier, any(with_embeddings))
            mask_logits, class_logits = outputs[0].float(), outputs[1].float()
            is_thing, class_thresholds = self._class_flags(state)
            reported = len(state.vocabulary)  # the negative classes follow, never reported
            padded_size = tuple(batch.tensor.shape[-2:])
            results = []
            for i in range(len(batch)):
                _stop_point(self._interrupted)
                masks = QueryMasks(mask_logits[i], padded_size, batch.resized_sizes[i],
                                   batch.original_sizes[i])
                region_embeddings = outputs[2][i] if with_embeddings[i] else None
                if self.mode == "panoptic":
                    panoptic = panoptic_inference(class_logits[i], masks, is_thing,
                                                  object_mask_threshold, overlap_threshold,
                                                  region_embeddings, class_thresholds, reported)
                    result = to_segmentation(panoptic, state.vocabulary.names, with_confidence[i])
                else:
                    semantic = semantic_inference(class_logits[i], masks, region_embeddings)
                    result = semantic_to_segmentation(semantic, state.vocabulary.names, is_thing,
                                                      with_confidence[i], reported)
                result.vocabulary_version = state.version
                results.append(result)
        return results

    def forward(self, images: torch.Tensor, classifier: TextClassifier,
                with_region_embeddings: bool) -> tuple[torch.Tensor, ...]:
        """The configured backend's network forward (FCCLIP.forward's outputs) on a prepared
        batch: the one step the backends change. Call it under torch.inference_mode()."""
        if self.exported is not None:
            try:
                return self.exported(images, classifier, with_region_embeddings)
            except ExportError as error:
                raise EngineError(str(error)) from error
        if self.autocast_dtype is not None:
            numerics = torch.autocast(self.device.type, dtype=self.autocast_dtype)
        elif self.device.type == "cuda":
            numerics = ieee_fp32()
        else:
            numerics = contextlib.nullcontext()
        with numerics:
            return self.model(images, classifier, with_region_embeddings=with_region_embeddings)

    def _class_flags(self, state: VocabularyState) -> tuple[torch.Tensor, torch.Tensor]:
        """Thing flags and thresholds (0: the global one) of every classified class, the
        negatives included (their thresholds are the global one), made once per version."""
        cached = self._class_tensors
        if cached is None or cached[0] != state.version:
            spec = state.spec
            flags = torch.tensor(spec.is_thing, dtype=torch.bool, device=self.device)
            thresholds = torch.zeros(len(flags), device=self.device)
            thresholds[: len(spec.vocabulary)] = torch.tensor(spec.aligned_thresholds)
            cached = self._class_tensors = (state.version, flags, thresholds)
        return cached[1], cached[2]
