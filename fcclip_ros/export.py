"""Export of FC-CLIP's network to ONNX / OpenVINO, with the vocabulary as a graph input.

The graph takes one normalised, padded image (1, 3, H, W) and the text classifier's three
tensors, `text_embeddings` (S, D), `class_of_row` (S,) and `seen` (C,), with S and C dynamic:
a vocabulary swap changes only those inputs, never the artifact. It returns the mask logits
(1, Q, H/4, W/4), the final class logits (1, Q, C + 1) of the geometric ensemble (synonym max
and void exactly as in PyTorch) and the region embeddings (1, Q, D). The image size is fixed per
artifact (one artifact per padded network input size).

An artifact is a directory holding the network file(s) and `fcclip_export.json`, the sidecar:
model, fingerprint of the weights, input size, format, exporter versions and the SHA-256 of each
file. `check_artifact` compares a directory with what the engine needs and returns the reason
it cannot be used (stale, another size or weights, corrupt); `ensure_artifact` rebuilds it then.
Loading never executes code: ONNX and OpenVINO IR are data, the sidecar is JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from fcclip_ros.model.classification import TextClassifier
from fcclip_ros.model.fcclip import FCCLIP
from fcclip_ros.settings import EXPORT_FORMATS

logger = logging.getLogger(__name__)

INPUT_NAMES = ("images", "text_embeddings", "class_of_row", "seen")
OUTPUT_NAMES = ("mask_logits", "class_logits", "region_embeddings")
SIDECAR_NAME = "fcclip_export.json"
SIDECAR_VERSION = 1
OPSET = 18
NETWORK_FILES = {"onnx": ("network.onnx",), "openvino": ("network.xml", "network.bin")}
# pip package -> module, for the packages each format needs to be written.
EXPORT_PACKAGES = {
    "onnx": {"onnx": "onnx", "onnxscript": "onnxscript"},
    "openvino": {"onnx": "onnx", "onnxscript": "onnxscript", "openvino": "openvino"},
}


class ExportError(RuntimeError):
    """An artifact cannot be written or used; the message says why."""


def require(package: str, module: str, purpose: str) -> object:
    """Import an optional dependency, or an ExportError naming the pip package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ExportError(f"{purpose} needs the Python package {package!r} "
                          f"(pip install {package}); import failed: {error}") from error


@dataclass(frozen=True)
class ArtifactKey:
    """What an artifact must have been made from to be usable."""

    model: str  # a key of fcclip_ros.model.config.VARIANTS
    weights_fingerprint: str  # weights_fingerprint() of the network it was exported from
    input_size: tuple[int, int]  # (H, W) of the padded network input
    format: str  # one of EXPORT_FORMATS

    @property
    def directory_name(self) -> str:
        height, width = self.input_size
        return f"{self.model}-{height}x{width}-{self.format}-{self.weights_fingerprint[:16]}"


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, dtypes, shapes, bytes): the same for the
    same weights whatever file they came from, different as soon as one value differs."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def exporter_versions(format: str) -> dict[str, str]:
    """Versions of the packages that write the artifact; another version means a rebuild."""
    return {package: importlib.metadata.version(package)
            for package in ("torch", *EXPORT_PACKAGES[format])}


class ExportableFCCLIP(nn.Module):
    """FCCLIP with the text classifier's tensors as plain inputs and all three outputs."""

    def __init__(self, model: FCCLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, text_embeddings: torch.Tensor,
                class_of_row: torch.Tensor, seen: torch.Tensor) -> tuple[torch.Tensor, ...]:
        classifier = TextClassifier(text_embeddings, class_of_row, seen)
        return self.model(images, classifier, with_region_embeddings=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's passes log every rewrite and every fold they skip; keep errors only."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(max(log.getEffectiveLevel(), logging.ERROR))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _export_onnx(model: FCCLIP, classifier: TextClassifier, size: tuple[int, int],
                 path: Path) -> None:
    for package, module in EXPORT_PACKAGES["onnx"].items():
        require(package, module, "exporting to ONNX")
    rows = torch.export.Dim("rows", min=1, max=1 << 20)
    classes = torch.export.Dim("classes", min=1, max=1 << 20)
    wrapper = ExportableFCCLIP(model).eval()
    classifier = classifier.to("cpu")
    inputs = (torch.zeros(1, 3, *size), classifier.embeddings.float(), classifier.class_of_row,
              classifier.seen)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                wrapper, inputs, dynamo=True, opset_version=OPSET, verbose=False,
                input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                dynamic_shapes={"images": None, "text_embeddings": {0: rows},
                                "class_of_row": {0: rows}, "seen": {0: classes}},
            )
            program.save(str(path))
    except Exception as error:  # the exporter raises many types; all mean "not exported"
        raise ExportError(f"the ONNX exporter failed: {error}") from error


def export_artifact(model: FCCLIP, classifier: TextClassifier, key: ArtifactKey,
                    directory: Path) -> Path:
    """Write the artifact `key` describes for `model` into `directory` (replaced as a whole,
    only once complete; a folder holding anything but an artifact is refused, never deleted).
    `classifier` is any vocabulary: it only gives the traced inputs."""
    if key.format not in EXPORT_FORMATS:
        raise ExportError(f"format {key.format!r}: use one of {', '.join(EXPORT_FORMATS)}")
    height, width = key.input_size
    if height <= 0 or width <= 0 or height % 32 or width % 32:
        raise ExportError(f"input size {height}x{width}: both sides must be positive multiples "
                          "of 32 (the padded network input)")
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not (directory / SIDECAR_NAME).exists():
        raise ExportError(f"{directory} exists and is not an export artifact (no {SIDECAR_NAME}); "
                          "give a new or empty folder")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    staging.chmod(0o755)
    try:
        device = next(model.parameters()).device
        model.cpu()
        try:
            with torch.no_grad():
                _export_onnx(model, classifier, key.input_size, staging / "network.onnx")
        finally:
            model.to(device)
        if key.format == "openvino":
            openvino = require("openvino", "openvino", "exporting to OpenVINO")
            converted = openvino.convert_model(str(staging / "network.onnx"))
            openvino.save_model(converted, str(staging / "network.xml"), compress_to_fp16=False)
            (staging / "network.onnx").unlink()
        sidecar = {
            "sidecar_version": SIDECAR_VERSION,
            **asdict(key),
            "input_names": list(INPUT_NAMES),
            "output_names": list(OUTPUT_NAMES),
            "opset": OPSET,
            "exporter_versions": exporter_versions(key.format),
            "files": {name: _sha256(staging / name) for name in NETWORK_FILES[key.format]},
        }
        (staging / SIDECAR_NAME).write_text(json.dumps(sidecar, indent=2))
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def check_artifact(directory: Path, key: ArtifactKey) -> str | None:
    """None when `directory` holds the artifact `key` asks for, else the reason it does not."""
    sidecar_path = Path(directory) / SIDECAR_NAME
    if not sidecar_path.is_file():
        return f"{sidecar_path} does not exist"
    try:
        sidecar = json.loads(sidecar_path.read_text())
        if not isinstance(sidecar, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return f"{sidecar_path} is unreadable ({error})"
    wanted = {"sidecar_version": SIDECAR_VERSION, **asdict(key),
              "exporter_versions": exporter_versions(key.format)}
    wanted["input_size"] = list(key.input_size)
    for field, value in wanted.items():
        if sidecar.get(field) != value:
            return f"it was made for {field} = {sidecar.get(field)!r}, this engine needs {value!r}"
    files = sidecar.get("files")
    if not isinstance(files, dict) or set(files) != set(NETWORK_FILES[key.format]):
        return f"{sidecar_path} does not list the files of a {key.format} artifact"
    for name, checksum in files.items():
        path = Path(directory) / name
        if not path.is_file():
            return f"{path} is missing"
        if _sha256(path) != checksum:
            return f"{path} does not match the checksum in its sidecar (corrupt or replaced)"
    return None


def ensure_artifact(model: FCCLIP, classifier: TextClassifier, key: ArtifactKey,
                    cache_root: Path) -> Path:
    """The directory of a usable artifact for `key` under `cache_root`, exported when there is
    none and re-exported (saying why) when the one there is stale, mismatched or corrupt."""
    directory = Path(cache_root) / key.directory_name
    reason = check_artifact(directory, key)
    if reason is None:
        return directory
    if directory.exists():
        logger.warning("rebuilding the %s artifact in %s: %s", key.format, directory, reason)
        shutil.rmtree(directory)  # named by its key inside the cache: nothing else lives there
    logger.info("exporting %s at %dx%d to %s (once per input size; this takes a while)",
                key.model, *key.input_size, key.format)
    export_artifact(model, classifier, key, directory)
    reason = check_artifact(directory, key)
    if reason is not None:
        raise ExportError(f"the freshly exported artifact in {directory} is unusable: {reason}")
    return directory
