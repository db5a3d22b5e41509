"""The one table of settings: every node parameter with its type, default, limits and help.

The node's parameter descriptors, `EngineConfig`'s defaults, the flags of `fcclip-ros segment`,
`bag` and `export`, the launch file's arguments and the comments of `config/segment.yaml` all
come from (or are tested against) this table, so a default or a help text is written once.

ROS-free and light, as the launch file imports it: the engine takes MODES and PRECISIONS from
here, while the model and backend names are written here rather than imported (their modules
load torch) and test_settings ties them to fcclip_ros.model.config and fcclip_ros.backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fcclip_ros.geometry import MIN_BOX_DEPTH_PIXELS
from fcclip_ros.image_conversion import DEFAULT_MAX_INPUT_PIXELS
from fcclip_ros.topics import DEFAULT_IMAGE_TOPICS, RECTIFICATIONS
from fcclip_ros.vocabulary import PRESETS

MODES = ("panoptic", "semantic")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
TRANSPORTS = ("raw", "compressed")
OFFLINE = ("segment", "bag")  # the commands that build an engine from the engine flags
WITH_EXPORT = (*OFFLINE, "export")
EXPORT_FORMATS = ("onnx", "openvino")  # fcclip-ros export --format (here: the CLI stays light)


@dataclass(frozen=True)
class Setting:
    """One node parameter and, where the offline commands take it, its command-line flag."""

    name: str  # the node parameter (and EngineConfig field, where the engine uses it)
    type: type  # str, int, float, bool, or tuple: an array of strings
    default: Any
    help: str  # the one text of the parameter descriptor, the flag's --help and the YAML comment
    tunable: bool = False  # may change while the node runs; else read-only
    choices: tuple[str, ...] = ()
    value_range: tuple[int, int] | tuple[float, float] | None = None  # (low, high), inclusive
    flag: str = ""  # e.g. "--short-side"
    commands: tuple[str, ...] = ()  # the fcclip-ros commands that take the flag
    separator: str = ""  # an array flag given as one string split at this; "": one word each
    repeated: bool = False  # an array flag given once per entry (e.g. --class-threshold a=0.5)

    @property
    def dest(self) -> str:
        """The flag's attribute on the parsed arguments."""
        return self.flag.lstrip("-").replace("-", "_")


def _text(*parts: str) -> str:
    """A help text written over several source lines."""
    return " ".join(parts)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "image_topics", tuple, DEFAULT_IMAGE_TOPICS,
        _text("Camera topics (sensor_msgs/Image). Outputs of <ns>/<name> are published under",
              "<ns>/segmentation/: labels, instances, confidence, overlay, segments, vocabulary",
              "(and the 3D and vision_msgs outputs)."),
    ),
    Setting(
        "transport", str, "raw",
        _text("raw: subscribe to each topic; compressed: to <topic>/compressed",
              "(sensor_msgs/CompressedImage: JPEG, PNG, TIFF, BMP, PNM or JPEG 2000 with 8- or",
              "16-bit unsigned samples)."),
        choices=TRANSPORTS,
    ),
    Setting(
        "model", str, "convnext_large",
        "FC-CLIP variant; tiny is a small configuration for tests.",
        choices=("convnext_large", "rn50", "rn101", "rn50x4", "rn50x16", "rn50x64", "tiny"),
        flag="--model", commands=WITH_EXPORT,
    ),
    Setting(
        "weights", str, "auto",
        _text("FC-CLIP checkpoint: auto (the model's file in the cache, put there by",
              "`fcclip-ros download`), a path, or random (pipeline tests only: labels are",
              "meaningless)."),
        flag="--weights", commands=WITH_EXPORT,
    ),
    Setting(
        "clip_weights", str, "auto",
        "CLIP weights: auto (open_clip's pretrained tag from its local cache), a path, or random.",
        flag="--clip-weights", commands=WITH_EXPORT,
    ),
    Setting(
        "device", str, "auto",
        "auto (the first GPU if there is one), cpu, cuda or cuda:N.",
        flag="--device", commands=OFFLINE,
    ),
    Setting(
        "precision", str, "auto",
        _text("Inference precision. auto: fp16 on CUDA where the official numerics allow, else",
              "fp32 (also for the exported backends); fp16 needs CUDA; bf16 with backend",
              "openvino uses the CPU's native bf16 (AVX512-BF16 / AMX)."),
        choices=PRECISIONS, flag="--precision", commands=OFFLINE,
    ),
    Setting(
        "backend", str, "torch",
        _text("Network forward: torch (eager PyTorch), openvino (CPU; pip install openvino) or",
              "onnxruntime (pip install onnxruntime). The exported network is built on the first",
              "frame of each size and cached under <cache_dir>/exported/ (or ahead of time:",
              "fcclip-ros export)."),
        choices=("torch", "openvino", "onnxruntime"), flag="--backend", commands=OFFLINE,
    ),
    Setting(
        "onnxruntime_providers", tuple, (),
        _text("Backend onnxruntime: execution providers in order of preference, e.g.",
              "CUDAExecutionProvider, CPUExecutionProvider; empty: CPU, or CUDA then CPU on a",
              "CUDA device."),
        flag="--onnxruntime-providers", commands=OFFLINE, separator=",",
    ),
    Setting(
        "mode", str, "panoptic",
        "panoptic: a label per segment (65535 where none); semantic: the argmax class per pixel.",
        choices=MODES, flag="--mode", commands=OFFLINE,
    ),
    Setting(
        "input_short_side", int, 800,
        _text("The network sees images resized to this short side (the official test size is",
              "800; lower it for speed, e.g. 480); 0 or the image's own short side: no resize."),
        value_range=(0, 4096), flag="--short-side", commands=WITH_EXPORT,
    ),
    Setting(
        "max_long_side", int, 1333,
        "Upper bound on the resized long side.",
        value_range=(32, 8192), flag="--max-long-side", commands=WITH_EXPORT,
    ),
    Setting(
        "max_input_pixels", int, DEFAULT_MAX_INPUT_PIXELS,
        _text("Images declaring more pixels (width x height, read from the message or file",
              "header before decoding) are refused as malformed: bounds the memory one frame",
              "can take."),
        value_range=(1, 16384 * 16384), flag="--max-input-pixels", commands=OFFLINE,
    ),
    Setting(
        "vocabulary", tuple, (),
        _text('Classes, each "name" or "name, synonym, ..." with an optional [thing] or [stuff]',
              "tag; non-empty overrides the preset. Setting it at runtime swaps the vocabulary;",
              "[] goes back to the preset."),
        tunable=True, flag="--vocabulary", commands=OFFLINE, separator=";",
    ),
    Setting(
        "vocabulary_preset", str, "coco",
        _text("Built-in vocabulary, used while the class list is empty. Setting it at runtime",
              "swaps to it and clears `vocabulary`."),
        tunable=True, choices=PRESETS, flag="--preset", commands=OFFLINE,
    ),
    Setting(
        "negative_vocabulary", tuple, (),
        _text('Negative classes, written like classes ("name" or "name, synonym, ..."): they',
              "compete in classification, and what they win is left unlabeled, with no segment",
              '(e.g. "poster, picture" beside "person"). None may share a synonym with a class.',
              "Setting it at runtime swaps the vocabulary."),
        tunable=True, flag="--negative", commands=OFFLINE, separator=";",
    ),
    Setting(
        "class_thresholds", tuple, (),
        _text("Panoptic: NAME=VALUE entries, NAME a class's name (its first synonym): that",
              "class's queries whose probability is not above VALUE are dropped, in place of",
              "object_mask_threshold (0: that one). Names, not a list aligned with the classes,",
              "so an entry keeps its meaning when classes are added; a vocabulary change that",
              "removes a named class is refused until its entry goes."),
        tunable=True, flag="--class-threshold", commands=OFFLINE, repeated=True,
    ),
    Setting(
        "object_mask_threshold", float, 0.0,
        "Panoptic: queries whose class probability is not above this are dropped.",
        tunable=True, value_range=(0.0, 1.0), flag="--object-mask-threshold", commands=OFFLINE,
    ),
    Setting(
        "overlap_threshold", float, 0.8,
        "Panoptic: segments keeping less than this share of their mask are dropped.",
        tunable=True, value_range=(0.0, 1.0), flag="--overlap-threshold", commands=OFFLINE,
    ),
    Setting(
        "cache_dir", str, "",
        _text("Checkpoints, text embeddings and exported networks; empty: $FCCLIP_ROS_CACHE or",
              "~/.cache/fcclip_ros."),
        flag="--cache-dir", commands=WITH_EXPORT,
    ),
    Setting(
        "max_batch_size", int, 4,
        _text("On CUDA, up to this many frames (of cameras with a waiting frame) share one",
              "forward pass; on the CPU frames go one at a time (batching gains nothing there and",
              "delays the first camera) unless `bag --batch-size` is given."),
        value_range=(1, 16), flag="--batch-size", commands=("bag",),
    ),
    Setting(
        "cpu_threads", int, 0,
        "CPU inference threads; 0: one per core. Lower it to leave cores to other nodes.",
        value_range=(0, 1024),
    ),
    Setting(
        "keep_embeddings", bool, True,
        _text("Compute every frame's per-segment CLIP embeddings and keep the latest per camera",
              "for the `query` service; false: only while `embeddings` is subscribed (queries then",
              "answer from the last frame that had them)."),
        tunable=True,
    ),
    Setting(
        "depth_topics", tuple, (),
        _text("Depth topics registered to the colour images (same size and frame_id; 16UC1 mm or",
              "32FC1 m, e.g. RealSense aligned_depth_to_color/image_raw), one per image topic in",
              'the same order ("" for a camera without depth). They turn on the 3D outputs',
              "(points, markers, detections_3d, the Segment 3D fields); empty: no 3D."),
        flag="--depth-topics", commands=("bag",),
    ),
    Setting(
        "camera_info_topics", tuple, (),
        _text("CameraInfo topics of the colour images, one per image topic in the same order;",
              'empty (or "" for one camera): camera_info beside the image topic.'),
        flag="--camera-info-topics", commands=("bag",),
    ),
    Setting(
        "depth_max_delay_s", float, 0.05,
        _text("A colour frame pairs with the depth of the same stamp, else with the nearest",
              "within this many seconds; without one its outputs are 2D only."),
        value_range=(0.0, 1.0), flag="--depth-max-delay", commands=("bag",),
    ),
    Setting(
        "rectification", str, "auto",
        _text("Whether the colour images are raw (the 3D undoes the CameraInfo's lens distortion",
              "through K and D) or rectified (back-projected through P, the distortion ignored).",
              "auto: by the topic's name, rectified for image_rect* (image_proc's names), raw",
              "otherwise; image files (segment) are raw."),
        choices=RECTIFICATIONS, flag="--rectification", commands=OFFLINE,
    ),
    Setting(
        "min_box_depth_pixels", int, MIN_BOX_DEPTH_PIXELS,
        _text("A segment gets a 3D box (center, size, marker, detections_3d entry) from at least",
              "this many depth readings away from its border and from depth steps; with fewer it",
              "has none (depth_pixels 0)."),
        value_range=(1, 1000000), flag="--min-box-depth-pixels", commands=OFFLINE,
    ),
    Setting(
        "points_stride", int, 2,
        _text("The point cloud (points, <stem>_points.ply) keeps every n-th pixel in both",
              "directions; 1: every pixel."),
        tunable=True, value_range=(1, 64), flag="--points-stride", commands=OFFLINE,
    ),
    Setting(
        "tracking", bool, True,
        _text("Give every segment a track id (Segment.track_id, and the vision_msgs and marker",
              "ids): the same object keeps its id from frame to frame and through occlusions",
              "shorter than tracking_max_lost_frames, per camera; an id is never given to",
              "another object. A lifecycle cleanup forgets the tracks, a vocabulary swap does",
              "not. false: track_id 0."),
        flag="--tracking", commands=("bag",),
    ),
    Setting(
        "tracking_max_lost_frames", int, 60,
        _text("Tracking: frames an unseen object is remembered, to come back with its id (60: 2",
              "s at 30 Hz)."),
        value_range=(0, 100000), flag="--tracking-max-lost-frames", commands=OFFLINE,
    ),
    Setting(
        "tracking_min_iou", float, 0.1,
        _text("Tracking: a thing continues a track its mask overlaps by at least this IoU (and",
              "whose appearance is not too different: tracking_min_cosine)."),
        value_range=(0.0, 1.0), flag="--tracking-min-iou", commands=OFFLINE,
    ),
    Setting(
        "tracking_min_cosine", float, 0.3,
        "Tracking: overlapping segments whose embeddings' cosine is below this are not matched.",
        value_range=(-1.0, 1.0), flag="--tracking-min-cosine", commands=OFFLINE,
    ),
    Setting(
        "tracking_reid_cosine", float, 0.6,
        _text("Tracking: without overlap (after an occlusion), a nearby thing takes a lost",
              "track's id when their embeddings' cosine is at least this."),
        value_range=(-1.0, 1.0), flag="--tracking-reid-cosine", commands=OFFLINE,
    ),
    Setting(
        "autostart", bool, True,
        _text("Configure and activate at start-up; false: the managed node waits in",
              "`unconfigured` for a lifecycle manager (Nav2's, or `ros2 lifecycle set /fcclip",
              "configure`)."),
    ),
    Setting(
        "overlay_alpha", float, 0.5, "Overlay: weight of the class colour against the image.",
        tunable=True, value_range=(0.0, 1.0),
    ),
    Setting("overlay_boundaries", bool, True, "Overlay: white lines between segments.",
            tunable=True),
    Setting("overlay_names", bool, True, "Overlay: class names at the segments.", tunable=True),
    Setting(
        "overlay_font_scale", float, 0.5, "Overlay: OpenCV font scale of the names.",
        tunable=True, value_range=(0.1, 4.0),
    ),
    Setting(
        "marker_lifetime", float, 2.0,
        _text("Markers: seconds a box and its label stay in RViz unless the next frame replaces",
              "them, so that a stopped node leaves none behind; set it above the time a frame",
              "takes on slow hardware. 0: until replaced (RViz keeps them forever)."),
        tunable=True, value_range=(0.0, 3600.0),
    ),
)
SETTINGS_BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}
# Setting -> fcclip_ros.tracking.TrackerConfig field (the tracker's other fields keep their
# defaults).
TRACKER_SETTINGS = {"tracking_max_lost_frames": "max_lost_frames",
                    "tracking_min_iou": "min_iou", "tracking_min_cosine": "min_cosine",
                    "tracking_reid_cosine": "reid_cosine"}


def default(name: str) -> Any:
    """The default of the setting `name` (KeyError for a name that is not a setting)."""
    return SETTINGS_BY_NAME[name].default


def flags(command: str) -> tuple[Setting, ...]:
    """The settings that `fcclip-ros <command>` takes as flags, in table order."""
    return tuple(setting for setting in SETTINGS if command in setting.commands)


def _number(value: float) -> str:
    """0.0 -> "0", 268435456 -> "268435456": a limit as people write it."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def constraints(setting: Setting) -> str:
    """ "one of: raw, compressed" or "1..64"; "" when any value of the type goes."""
    if setting.choices:
        return "one of: " + ", ".join(setting.choices)
    if setting.value_range:
        low, high = setting.value_range
        return f"{_number(low)}..{_number(high)}"
    return ""


def note(setting: Setting) -> str:
    """ "read-only, one of: raw, compressed", "runtime-tunable, 0..1": what the YAML comment and
    the launch argument say after the help text."""
    access = "runtime-tunable" if setting.tunable else "read-only"
    return ", ".join(part for part in (access, constraints(setting)) if part)
