"""Network forward on an exported artifact: ONNX Runtime or OpenVINO instead of eager PyTorch.

Only the forward changes: the engine's pre-processing, vocabulary (its classifier becomes three
graph inputs) and post-processing stay shared with the torch backend. An artifact is built for
each padded network input size the first time a frame of that size arrives (or ahead of time
with `fcclip-ros export`), cached under <cache_dir>/exported/ and keyed by its sidecar
(fcclip_ros.export). Both runtimes are optional packages: a missing one is an ExportError that
names the pip package.

Interrupts: `cancel()` stops a run in flight (ONNX Runtime's RunOptions.terminate, OpenVINO's
InferRequest.cancel); the engine's stop point then raises its interrupted error.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from time import monotonic

import numpy as np
import torch

from fcclip_ros.export import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    ArtifactKey,
    ExportError,
    ensure_artifact,
    require,
)
from fcclip_ros.model.classification import TextClassifier
from fcclip_ros.model.fcclip import FCCLIP

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "openvino", "onnxruntime")
FORMAT_OF_BACKEND = {"openvino": "openvino", "onnxruntime": "onnx"}
RUNTIME_PACKAGE = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16"}
# An export takes from seconds to minutes: a size whose export failed is not tried again on every
# frame, only once this long has passed (the failure may have been a full disk).
RETRY_FAILED_EXPORT_S = 300.0


def openvino_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (AVX512-BF16 / AMX)."""
    core = require("openvino", "openvino", "backend openvino").Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class ExportedNetwork(ABC):
    """FCCLIP's forward on one artifact per input size; see the module docstring.

    `stop_point` raises the engine's interrupted error when an interrupt is pending; it runs
    before each image's forward and when a runtime reports a cancelled run.
    """

    backend: str

    def __init__(self, model: FCCLIP, model_name: str, fingerprint: str, cache_root: Path,
                 stop_point: Callable[[], None]) -> None:
        self.runtime = require(RUNTIME_PACKAGE[self.backend], RUNTIME_PACKAGE[self.backend],
                               f"backend {self.backend}")
        self._model = model
        self._model_name = model_name
        self._fingerprint = fingerprint
        self._cache_root = Path(cache_root)
        self._stop_point = stop_point
        self._compiled: dict[tuple[int, int], object] = {}
        self._failed: dict[tuple[int, int], tuple[str, float]] = {}  # size -> (reason, retry at)
        self._cancel_lock = threading.Lock()
        self._in_flight: object | None = None  # what cancel() stops

    def key(self, size: tuple[int, int]) -> ArtifactKey:
        return ArtifactKey(self._model_name, self._fingerprint, tuple(size),
                           FORMAT_OF_BACKEND[self.backend])

    def prepare(self, size: tuple[int, int], classifier: TextClassifier) -> Path:
        """Build (or find) and load the artifact for a padded input size; returns its folder.
        A failure is remembered for RETRY_FAILED_EXPORT_S: until then the size is refused at
        once with the same reason."""
        size = tuple(size)
        if size in self._failed:
            reason, retry_at = self._failed[size]
            if monotonic() < retry_at:
                raise ExportError(f"{reason} (not tried again for {size[0]}x{size[1]} inputs "
                                  f"for another {retry_at - monotonic():.0f} s)")
        try:
            directory = self._build_and_load(size, classifier)
        except ExportError as error:
            self._failed[size] = (str(error), monotonic() + RETRY_FAILED_EXPORT_S)
            raise
        self._failed.pop(size, None)
        return directory

    def _build_and_load(self, size: tuple[int, int], classifier: TextClassifier) -> Path:
        try:
            directory = ensure_artifact(self._model, classifier, self.key(size), self._cache_root)
        except OSError as error:  # an unwritable or full cache
            raise ExportError(f"cannot write the {self.backend} artifact for {size[0]}x{size[1]} "
                              f"inputs under {self._cache_root}: {error}") from error
        if size not in self._compiled:
            try:
                self._compiled[size] = self._load(directory)
            except Exception as error:  # runtimes raise their own types for unreadable graphs
                raise ExportError(f"{self.backend} cannot load {directory}: {error}") from error
        return directory

    def __call__(self, images: torch.Tensor, classifier: TextClassifier,
                 with_region_embeddings: bool = False) -> tuple[torch.Tensor, ...]:
        """Same outputs as FCCLIP.forward, on `images`' device, one image per run."""
        size = tuple(images.shape[-2:])
        if size not in self._compiled:
            self.prepare(size, classifier)
        feeds = {
            "text_embeddings": classifier.embeddings.float().cpu().numpy(),
            "class_of_row": classifier.class_of_row.cpu().numpy(),
            "seen": classifier.seen.cpu().numpy(),
        }
        per_image = []
        for image in images:
            self._stop_point()
            feeds["images"] = image[None].float().cpu().numpy()
            per_image.append(self._run(self._compiled[size], feeds))
        outputs = tuple(torch.from_numpy(np.concatenate(parts)).to(images.device)
                        for parts in zip(*per_image, strict=True))
        return outputs if with_region_embeddings else outputs[:2]

    def cancel(self) -> None:
        """Stop the run in flight, if any (called from another thread)."""
        with self._cancel_lock:
            if self._in_flight is not None:
                self._cancel(self._in_flight)

    def _track(self, handle: object | None) -> None:
        with self._cancel_lock:
            self._in_flight = handle

    @abstractmethod
    def _load(self, directory: Path) -> object: ...

    @abstractmethod
    def _run(self, compiled: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    @abstractmethod
    def _cancel(self, handle: object) -> None: ...


class OnnxRuntimeNetwork(ExportedNetwork):
    """ONNX Runtime with the given execution providers, in order of preference."""

    backend = "onnxruntime"

    def __init__(self, model: FCCLIP, model_name: str, fingerprint: str, cache_root: Path,
                 stop_point: Callable[[], None], providers: Sequence[str] = (),
                 threads: int = 0) -> None:
        super().__init__(model, model_name, fingerprint, cache_root, stop_point)
        available = self.runtime.get_available_providers()
        self.providers = list(providers) or ["CPUExecutionProvider"]
        unknown = [name for name in self.providers if name not in available]
        if unknown:
            raise ExportError(f"onnxruntime_providers {', '.join(unknown)} not available in this "
                              f"onnxruntime; available: {', '.join(available)}")
        self._threads = threads

    def _load(self, directory: Path) -> object:
        options = self.runtime.SessionOptions()
        options.intra_op_num_threads = self._threads
        return self.runtime.InferenceSession(str(directory / "network.onnx"), options,
                                             providers=self.providers)

    def _run(self, compiled: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        run_options = self.runtime.RunOptions()
        self._track(run_options)
        try:
            return compiled.run(list(OUTPUT_NAMES), {name: feeds[name] for name in INPUT_NAMES},
                                run_options)
        except Exception as error:
            self._stop_point()  # a terminated run is an interrupt, not a failure
            raise ExportError(f"onnxruntime failed: {error}") from error
        finally:
            self._track(None)

    def _cancel(self, handle: object) -> None:
        handle.terminate = True


class OpenVINONetwork(ExportedNetwork):
    """OpenVINO on the CPU in f32 or, where the CPU has it, bf16."""

    backend = "openvino"

    def __init__(self, model: FCCLIP, model_name: str, fingerprint: str, cache_root: Path,
                 stop_point: Callable[[], None], precision: str = "fp32",
                 threads: int = 0) -> None:
        super().__init__(model, model_name, fingerprint, cache_root, stop_point)
        if precision not in OPENVINO_PRECISION:
            raise ExportError(f"backend openvino runs on the CPU in fp32 or bf16, not {precision}")
        if precision == "bf16" and not openvino_supports_bf16():
            raise ExportError("precision bf16: this CPU has no native bf16 (OpenVINO reports "
                              "no BF16 capability); use fp32")
        self.precision = precision
        self._config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[precision]}
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = threads
        self._core = self.runtime.Core()

    def _load(self, directory: Path) -> object:
        compiled = self._core.compile_model(str(directory / "network.xml"), "CPU", self._config)
        return compiled.create_infer_request()

    def _run(self, compiled: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self._track(compiled)
        try:
            compiled.start_async({name: feeds[name] for name in INPUT_NAMES})
            compiled.wait()
        except Exception as error:
            self._stop_point()  # a cancelled request is an interrupt, not a failure
            raise ExportError(f"openvino failed: {error}") from error
        finally:
            self._track(None)
        self._stop_point()  # cancel() may end wait() without an error
        return [compiled.get_tensor(name).data.copy() for name in OUTPUT_NAMES]

    def _cancel(self, handle: object) -> None:
        handle.cancel()
