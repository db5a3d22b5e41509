"""sensor_msgs Image / CompressedImage <-> NumPy, without importing ROS.

Camera drivers publish many pixel layouts; the engine wants RGB uint8 (H, W, 3). Messages are
taken duck-typed (any object with the message's fields), so this module is testable without
rclpy and usable on bag data.

When ROS 2's ``cv_bridge`` is importable it converts raw images, so that our pixels match every
other node on that machine; otherwise (PyPI installs, or a cv_bridge built against NumPy 1 that
fails to import under NumPy 2) the NumPy/OpenCV path below does the same conversions: 16-bit data
is scaled full range to 8 bits, Bayer mosaics are demosaiced bilinearly, YUV 4:2:2 uses OpenCV's
BT.601 conversion. Either way the message geometry is validated first, so every unusable image
raises :class:`ImageConversionError` with the precise reason.

Hostile or broken publishers cannot make us allocate without bound: an image declaring more than
``max_pixels`` is refused from its header (raw width/height, or the compressed file's header)
before any pixel is copied or decoded. A 1 MB PNG may declare 30000x30000 pixels, 2.7 GB decoded.
"""

from __future__ import annotations

import array
import io
import sys
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import (
    BmpImagePlugin,
    Jpeg2KImagePlugin,
    JpegImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    TiffImagePlugin,
)

try:  # ROS 2's converter where installed; see the module docstring.
    from cv_bridge import CvBridge

    _BRIDGE: Any = CvBridge()
except (ImportError, AttributeError):
    _BRIDGE = None


DEFAULT_MAX_INPUT_PIXELS = 4096 * 4096  # 16.8 MP: beyond any robot camera, 50 MB as RGB

# PIL classes that read a file's header (size, mode) without decoding any pixel. They are used
# directly, not through Image.open, because Image.open first applies PIL's own decompression-bomb
# limit (a warning above 89 MP, an error above 179 MP, in PIL's words): max_pixels must be the one
# limit, with our message. WebP is left out: PIL's WebP header reader allocates the whole canvas.
_HEADER_READERS = (
    JpegImagePlugin.JpegImageFile,
    PngImagePlugin.PngImageFile,
    TiffImagePlugin.TiffImageFile,
    BmpImagePlugin.BmpImageFile,
    PpmImagePlugin.PpmImageFile,
    Jpeg2KImagePlugin.Jpeg2KImageFile,
)
_HEADER_FORMATS = "JPEG, PNG, TIFF, BMP, PNM or JPEG 2000"
# Sample types the 8-bit conversion understands; anything else (float, signed) would turn black.
_SAMPLE_TYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


class ImageConversionError(ValueError):
    """An image message that cannot be turned into pixels; the message says why."""


def check_pixel_count(width: int, height: int, max_pixels: int) -> None:
    """Refuse an image larger than `max_pixels`, from its declared size, before it is allocated."""
    if width * height > max_pixels:
        raise ImageConversionError(
            f"image is {width}x{height} = {width * height} pixels,"
            f" over max_input_pixels {max_pixels}"
        )


def declared_size(
    data: bytes | memoryview, max_pixels: int = DEFAULT_MAX_INPUT_PIXELS
) -> tuple[int, int]:
    """(height, width) of an encoded image as its header declares it, read without decoding.

    Refuses data that is not a JPEG/PNG/TIFF/BMP/PNM/JPEG 2000 file, and images over
    `max_pixels`, so that whoever decodes afterwards allocates at most `max_pixels` pixels.
    """
    complaints = []
    for reader in _HEADER_READERS:
        try:
            header = reader(io.BytesIO(data))
        except (SyntaxError, OSError, ValueError) as error:
            # PIL's readers say "not a <format> file" when the signature differs; anything else
            # is what is wrong with a file of this format (truncated, an unknown pixel mode, ...).
            if not str(error).lower().startswith("not a"):
                complaints.append(f"{reader.format} header: {error}")
            continue
        width, height = header.size
        check_pixel_count(width, height, max_pixels)
        return height, width
    reason = "; ".join(complaints) or f"no {_HEADER_FORMATS} header found"
    raise ImageConversionError(
        f"could not decode {len(data)} bytes: {reason} (corrupt, truncated or another format?)"
    )


@dataclass(frozen=True)
class _Layout:
    """How one ROS encoding stores a pixel, and the OpenCV code that turns it into RGB."""

    bytes_per_channel: int
    channels: int
    to_rgb: int | None  # cv2.cvtColor code applied after 16-bit data is scaled to 8 bits


def _layouts() -> dict[str, _Layout]:
    # OpenCV names Bayer patterns after the second row, so ROS "rggb" is cv2 "BayerBG".
    bayer = {
        "rggb": cv2.COLOR_BayerBG2RGB,
        "bggr": cv2.COLOR_BayerRG2RGB,
        "gbrg": cv2.COLOR_BayerGR2RGB,
        "grbg": cv2.COLOR_BayerGB2RGB,
    }
    layouts = {}
    for bits, size in ((8, 1), (16, 2)):
        layouts[f"rgb{bits}"] = _Layout(size, 3, None)
        layouts[f"bgr{bits}"] = _Layout(size, 3, cv2.COLOR_BGR2RGB)
        layouts[f"rgba{bits}"] = _Layout(size, 4, cv2.COLOR_RGBA2RGB)
        layouts[f"bgra{bits}"] = _Layout(size, 4, cv2.COLOR_BGRA2RGB)
        layouts[f"mono{bits}"] = _Layout(size, 1, cv2.COLOR_GRAY2RGB)
        # Generic OpenCV types: channel order is OpenCV's (BGR), as cv_bridge assumes.
        layouts[f"{bits}UC1"] = _Layout(size, 1, cv2.COLOR_GRAY2RGB)
        layouts[f"{bits}UC3"] = _Layout(size, 3, cv2.COLOR_BGR2RGB)
        layouts[f"{bits}UC4"] = _Layout(size, 4, cv2.COLOR_BGRA2RGB)
        for pattern, code in bayer.items():
            layouts[f"bayer_{pattern}{bits}"] = _Layout(size, 1, code)
    # "yuv422" is UYVY byte order in ROS; "yuv422_yuy2" is YUYV.
    for name in ("yuv422", "uyvy"):
        layouts[name] = _Layout(1, 2, cv2.COLOR_YUV2RGB_UYVY)
    for name in ("yuv422_yuy2", "yuyv"):
        layouts[name] = _Layout(1, 2, cv2.COLOR_YUV2RGB_YUY2)
    return layouts


_LAYOUTS = _layouts()
SUPPORTED_ENCODINGS = frozenset(_LAYOUTS)

# Encodings of the images the node publishes: NumPy dtype and channel count.
_OUTPUT_LAYOUTS = {"mono16": ("u2", 1), "32SC1": ("i4", 1), "32FC1": ("f4", 1), "rgb8": ("u1", 3)}


def _raw_pixels(msg: Any, layout: _Layout) -> np.ndarray:
    """View the message's bytes as (H, W, C) without copying, honouring step and byte order."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image has zero size ({width}x{height})")
    row_bytes = width * layout.channels * layout.bytes_per_channel
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is shorter than a row of {width} {msg.encoding} pixels"
            f" ({row_bytes} bytes)"
        )
    data = memoryview(msg.data).cast("B")
    if len(data) < step * height:
        raise ImageConversionError(
            f"data has {len(data)} bytes, step*height needs {step}*{height} = {step * height}"
        )
    if layout.bytes_per_channel == 1:
        dtype = np.dtype(np.uint8)
    else:
        dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
    return np.ndarray(
        shape=(height, width, layout.channels),
        dtype=dtype,
        buffer=data,
        strides=(step, layout.channels * dtype.itemsize, dtype.itemsize),
    )


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """16-bit -> 8-bit as round(v * 255 / 65535), full scale to full scale; 8-bit passes through."""
    if pixels.dtype.itemsize == 1:
        return np.ascontiguousarray(pixels)
    return ((pixels.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)


def image_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> np.ndarray:
    """A sensor_msgs/Image (or any object with its fields) as RGB uint8 (H, W, 3).

    Images declaring more than `max_pixels` are refused before their data is read.
    """
    encoding = msg.encoding
    layout = _LAYOUTS.get(encoding)
    if layout is None:
        known = ", ".join(sorted(SUPPORTED_ENCODINGS))
        raise ImageConversionError(f"unsupported encoding {encoding!r} (supported: {known})")
    check_pixel_count(int(msg.width), int(msg.height), max_pixels)
    if layout.channels == 2 and int(msg.width) % 2:
        raise ImageConversionError(f"{encoding} needs an even width, got {msg.width}")
    pixels = _raw_pixels(msg, layout)  # validates the geometry before any converter reads it
    if _BRIDGE is not None:
        try:
            return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
        except Exception as error:  # cv_bridge raises its own and OpenCV's error types
            reason = f"cv_bridge could not convert {encoding}: {error}"
            raise ImageConversionError(reason) from error
    pixels = _to_uint8(pixels)
    if layout.to_rgb is None:
        return pixels
    return cv2.cvtColor(pixels[:, :, 0] if layout.channels == 1 else pixels, layout.to_rgb)


def compressed_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> np.ndarray:
    """A sensor_msgs/CompressedImage (JPEG, PNG, TIFF, BMP, PNM, JPEG 2000) as RGB uint8.

    The size is read from the file's header and checked against `max_pixels` before decoding;
    only 8- and 16-bit unsigned samples with 1, 3 or 4 channels are accepted (a float TIFF would
    otherwise be taken for 16-bit data and segmented as a black frame).
    """
    if "compresseddepth" in msg.format.lower().replace(" ", ""):
        raise ImageConversionError(f"format {msg.format!r} is a depth image, not a camera image")
    buffer = np.frombuffer(memoryview(msg.data).cast("B"), dtype=np.uint8)
    if buffer.size == 0:
        raise ImageConversionError("compressed image has no data")
    try:
        declared_size(buffer.data, max_pixels)
    except ImageConversionError as error:
        raise ImageConversionError(f"format {msg.format!r}: {error}") from None
    try:
        decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error:  # OpenCV's decoders assert on some damaged files instead of failing
        decoded = None
    if decoded is None or decoded.size == 0:
        raise ImageConversionError(
            f"could not decode {buffer.size} bytes of format {msg.format!r} (corrupt or truncated?)"
        )
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    if decoded.dtype not in _SAMPLE_TYPES or channels not in (1, 3, 4):
        raise ImageConversionError(
            f"format {msg.format!r}: {channels}-channel {decoded.dtype} samples are not supported"
            " (only 8- or 16-bit unsigned integers with 1, 3 or 4 channels)"
        )
    decoded = _to_uint8(decoded)
    if decoded.ndim == 2:
        return cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    code = cv2.COLOR_BGRA2RGB if decoded.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(decoded, code)


def fill_image(msg: Any, pixels: np.ndarray, encoding: str) -> Any:
    """Write pixels into an Image message (header untouched) as mono16, 32SC1, 32FC1 or rgb8."""
    if encoding not in _OUTPUT_LAYOUTS:
        raise ValueError(f"cannot publish encoding {encoding!r}; one of {sorted(_OUTPUT_LAYOUTS)}")
    kind, channels = _OUTPUT_LAYOUTS[encoding]
    pixels = np.ascontiguousarray(pixels, dtype=np.dtype(kind).newbyteorder("="))
    if pixels.shape[2:] != ((channels,) if channels > 1 else ()):
        raise ValueError(f"{encoding} needs {channels} channel(s), got shape {pixels.shape}")
    msg.height, msg.width = pixels.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.step = pixels.shape[1] * channels * pixels.itemsize
    data = array.array("B")
    data.frombytes(memoryview(pixels).cast("B"))
    msg.data = data
    return msg
