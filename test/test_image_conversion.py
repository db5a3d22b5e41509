"""Every encoding a camera driver sends becomes the right RGB pixels, or a precise error."""

from __future__ import annotations

import struct
import warnings
import zlib
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import skimage.data
from helpers.images import message, mosaic, pack_422, to_16bit

from fcclip_ros import image_conversion
from fcclip_ros.image_conversion import (
    DEFAULT_MAX_INPUT_PIXELS,
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    compressed_to_rgb,
    declared_size,
    fill_image,
    image_to_rgb,
)

pytestmark = pytest.mark.fast

RGB = np.ascontiguousarray(skimage.data.astronaut()[::8, ::8])  # (64, 64, 3) real photo


def gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


@pytest.fixture(autouse=True)
def numpy_path(monkeypatch):
    """These tests check our NumPy conversions whether or not cv_bridge is installed."""
    monkeypatch.setattr(image_conversion, "_BRIDGE", None)


@pytest.mark.parametrize(
    ("encoding", "pixels"),
    [
        ("rgb8", RGB),
        ("bgr8", RGB[..., ::-1]),
        ("8UC3", RGB[..., ::-1]),
        ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])),
        ("bgra8", np.dstack([RGB[..., ::-1], np.full(RGB.shape[:2], 7, np.uint8)])),
        ("8UC4", np.dstack([RGB[..., ::-1], np.full(RGB.shape[:2], 7, np.uint8)])),
        ("rgb16", to_16bit(RGB)),
        ("bgr16", to_16bit(RGB[..., ::-1])),
        ("16UC3", to_16bit(RGB[..., ::-1])),
        ("rgba16", to_16bit(np.dstack([RGB, RGB[..., :1]]))),
        ("bgra16", to_16bit(np.dstack([RGB[..., ::-1], RGB[..., :1]]))),
    ],
)
@pytest.mark.parametrize("padding", [0, 6])
def test_colour_encodings_give_the_exact_rgb_pixels(encoding, pixels, padding):
    converted = image_to_rgb(message(np.ascontiguousarray(pixels), encoding, padding=padding))
    assert converted.dtype == np.uint8 and converted.shape == RGB.shape
    np.testing.assert_array_equal(converted, RGB)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1", "mono16", "16UC1"])
@pytest.mark.parametrize("big_endian", [False, True])
def test_grey_encodings_repeat_the_grey_value_in_all_channels(encoding, big_endian):
    grey = gray(RGB)
    pixels = to_16bit(grey) if "16" in encoding else grey
    converted = image_to_rgb(message(pixels, encoding, padding=2, big_endian=big_endian))
    np.testing.assert_array_equal(converted, np.dstack([grey] * 3))


def test_big_endian_16_bit_is_read_most_significant_byte_first():
    value = np.array([[0x00FF, 0xFF00, 0xFFFF]], dtype=np.uint16)
    expected = [1, 254, 255]  # round(v * 255 / 65535); a swapped byte order would give 254, 1
    for big_endian in (True, False):
        converted = image_to_rgb(message(value, "mono16", big_endian=big_endian))
        assert converted[0, :, 0].tolist() == expected


@pytest.mark.parametrize(
    ("encoding", "order"),
    [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuv422_yuy2", "yuyv"), ("yuyv", "yuyv")],
)
def test_yuv422_byte_orders_decode_to_the_original_colours(encoding, order):
    flat = np.repeat(RGB[:, ::2], 2, axis=1)  # equal pixel pairs, so 4:2:2 loses no chroma
    converted = image_to_rgb(message(pack_422(flat, order), encoding, padding=4))
    assert np.abs(converted.astype(int) - flat).max() <= 4


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer_patterns_demosaic_flat_colours_exactly(pattern, bits):
    colours = np.array([[200, 40, 90], [10, 220, 60], [30, 70, 250], [120, 120, 20]], np.uint8)
    flat = np.repeat(np.repeat(colours.reshape(2, 2, 3), 16, axis=0), 16, axis=1)  # 32x32 blocks
    raw = mosaic(flat, pattern)
    raw = to_16bit(raw) if bits == 16 else raw
    converted = image_to_rgb(message(raw, f"bayer_{pattern}{bits}"))
    inner = (slice(4, 12), slice(4, 12))  # away from block edges and the border
    for block_row in range(2):
        for block_col in range(2):
            rows = slice(block_row * 16 + inner[0].start, block_row * 16 + inner[0].stop)
            cols = slice(block_col * 16 + inner[1].start, block_col * 16 + inner[1].stop)
            expected = colours[block_row * 2 + block_col]
            assert np.abs(converted[rows, cols].astype(int) - expected).max() <= 1, pattern


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"encoding": "32FC1"}, "unsupported encoding '32FC1'"),
        ({"encoding": "bogus"}, "unsupported encoding 'bogus'"),
        ({"height": 0}, "zero size"),
        ({"width": 0}, "zero size"),
        ({"step": 100}, "step 100 is shorter than a row of 64 rgb8 pixels (192 bytes)"),
        ({"data": bytes(1000)}, "data has 1000 bytes, step*height needs 192*64 = 12288"),
        ({"encoding": "yuv422", "width": 63, "step": 192}, "needs an even width, got 63"),
    ],
)
def test_unusable_images_raise_a_precise_reason(change, reason):
    msg = message(RGB, "rgb8")
    for field, value in change.items():
        setattr(msg, field, value)
    with pytest.raises(ImageConversionError) as error:
        image_to_rgb(msg)
    assert reason in str(error.value)


def test_data_longer_than_step_times_height_is_accepted():
    msg = message(RGB, "rgb8")
    msg.data += bytes(10)
    np.testing.assert_array_equal(image_to_rgb(msg), RGB)


def test_every_supported_encoding_converts_a_valid_message():
    for encoding in SUPPORTED_ENCODINGS:
        layout = image_conversion._LAYOUTS[encoding]
        shape = (8, 8, layout.channels)
        dtype = np.uint16 if layout.bytes_per_channel == 2 else np.uint8
        converted = image_to_rgb(message(np.zeros(shape, dtype), encoding))
        assert converted.shape == (8, 8, 3) and converted.dtype == np.uint8, encoding


def compressed(pixels_bgr: np.ndarray, extension: str):
    ok, data = cv2.imencode(extension, pixels_bgr)
    assert ok
    return SimpleNamespace(format=extension[1:], data=data.tobytes())


def test_png_compressed_images_decode_losslessly_in_rgb_order():
    np.testing.assert_array_equal(compressed_to_rgb(compressed(RGB[..., ::-1], ".png")), RGB)
    grey = gray(RGB)
    np.testing.assert_array_equal(
        compressed_to_rgb(compressed(to_16bit(grey), ".png")), np.dstack([grey] * 3)
    )


def test_jpeg_compressed_images_decode_close_to_the_original():
    decoded = compressed_to_rgb(compressed(RGB[..., ::-1], ".jpg"))
    assert decoded.shape == RGB.shape
    assert np.abs(decoded.astype(int) - RGB).mean() < 6  # lossy, but in RGB order


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (SimpleNamespace(format="jpeg", data=b""), "no data"),
        (SimpleNamespace(format="jpeg", data=b"\xff\xd8 not really a jpeg"), "could not decode"),
        (SimpleNamespace(format="16UC1; compressedDepth png", data=b"x"), "depth image"),
        (SimpleNamespace(format="png", data=b"hello"), "no JPEG, PNG, TIFF, BMP, PNM or JPEG 2000"),
        # PIL's WebP header reader allocates the whole canvas, so WebP is not accepted.
        (compressed(RGB, ".webp"), "no JPEG, PNG, TIFF, BMP, PNM or JPEG 2000 header"),
        (
            SimpleNamespace(format="png", data=compressed(RGB, ".png").data[:20]),
            "PNG header: Truncated File Read",
        ),
    ],
)
def test_unusable_compressed_images_raise_a_precise_reason(msg, reason):
    with pytest.raises(ImageConversionError, match=reason):
        compressed_to_rgb(msg)


def test_decoder_assertions_are_a_refusal(monkeypatch):
    def asserting(*_):
        raise cv2.error("OpenCV(4.12.0) loadsave.cpp:77: error: (-215:Assertion failed)")

    monkeypatch.setattr(image_conversion.cv2, "imdecode", asserting)
    with pytest.raises(ImageConversionError, match="could not decode"):
        compressed_to_rgb(compressed(RGB, ".bmp"))


def test_truncated_jpeg_is_refused_or_decoded_but_never_crashes():
    data = compressed(RGB[..., ::-1], ".jpg").data
    try:
        decoded = compressed_to_rgb(SimpleNamespace(format="jpeg", data=data[: len(data) // 2]))
    except ImageConversionError:
        return
    assert decoded.shape == RGB.shape  # libjpeg may pad a truncated stream with grey


@pytest.mark.parametrize(
    ("encoding", "pixels"),
    [
        ("mono16", np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000),
        ("32FC1", np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)),
        ("rgb8", RGB),
    ],
)
def test_published_images_round_trip_through_the_message_fields(encoding, pixels):
    msg = fill_image(SimpleNamespace(header="kept"), pixels, encoding)
    assert (msg.header, msg.encoding) == ("kept", encoding)
    assert (msg.height, msg.width) == pixels.shape[:2]
    assert msg.step * msg.height == len(msg.data)
    dtype = pixels.dtype.newbyteorder(">" if msg.is_bigendian else "<")
    decoded = np.frombuffer(msg.data, dtype=dtype).reshape(pixels.shape)
    np.testing.assert_array_equal(decoded, pixels)
    if encoding == "rgb8":
        np.testing.assert_array_equal(image_to_rgb(msg), pixels)


def test_published_images_refuse_a_wrong_shape_or_encoding():
    with pytest.raises(ValueError, match="1 channel"):
        fill_image(SimpleNamespace(), RGB, "mono16")
    with pytest.raises(ValueError, match="cannot publish"):
        fill_image(SimpleNamespace(), RGB, "bgr8")


def test_cv_bridge_converts_when_installed_after_our_geometry_checks(monkeypatch):
    calls = []

    class FakeBridge:
        def imgmsg_to_cv2(self, msg, desired_encoding):
            calls.append(desired_encoding)
            if msg.encoding == "yuyv":
                raise RuntimeError("conversion not supported")
            return RGB

    monkeypatch.setattr(image_conversion, "_BRIDGE", FakeBridge())
    np.testing.assert_array_equal(image_to_rgb(message(RGB[..., ::-1], "bgr8")), RGB)
    assert calls == ["rgb8"]
    bad_step = message(RGB, "rgb8")
    bad_step.step = 3
    with pytest.raises(ImageConversionError, match="step 3"):
        image_to_rgb(bad_step)
    assert calls == ["rgb8"]  # refused before cv_bridge saw it
    with pytest.raises(ImageConversionError, match="cv_bridge could not convert yuyv"):
        image_to_rgb(message(pack_422(RGB, "yuyv"), "yuyv"))


def png_declaring(width: int, height: int) -> bytes:
    """The start of an 8-bit RGB PNG declaring width x height: a decompression bomb's header.

    A real bomb follows it with ~1 MB of deflated zeros that decode to width x height x 3 bytes;
    the header alone must be enough to refuse it.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(99)))


OVER_4095 = "64x64 = 4096 pixels, over max_input_pixels 4095"


def test_default_pixel_limit_is_4096_squared():
    assert DEFAULT_MAX_INPUT_PIXELS == 4096 * 4096 == 16777216


def test_raw_images_over_the_pixel_limit_are_refused_before_their_data_is_read():
    giant = SimpleNamespace(height=30000, width=30000, encoding="rgb8", is_bigendian=0,
                            step=90000, data=None)  # data is never looked at
    with pytest.raises(ImageConversionError) as error:
        image_to_rgb(giant)
    assert "image is 30000x30000 = 900000000 pixels, over max_input_pixels 16777216" in str(
        error.value
    )
    with pytest.raises(ImageConversionError, match=OVER_4095):
        image_to_rgb(message(RGB, "rgb8"), max_pixels=4095)
    np.testing.assert_array_equal(image_to_rgb(message(RGB, "rgb8"), max_pixels=4096), RGB)


def test_compressed_bomb_is_refused_from_its_header_without_decoding(monkeypatch):
    def no_decoding(*_):
        raise AssertionError("cv2.imdecode was called")

    monkeypatch.setattr(image_conversion.cv2, "imdecode", no_decoding)
    bomb = SimpleNamespace(format="png", data=png_declaring(30000, 30000))
    with pytest.raises(ImageConversionError) as error:
        compressed_to_rgb(bomb)
    assert str(error.value) == (
        "format 'png': image is 30000x30000 = 900000000 pixels, over max_input_pixels 16777216"
    )


@pytest.mark.parametrize("extension", [".png", ".jpg", ".tiff", ".bmp", ".ppm", ".pgm"])
def test_every_accepted_format_is_size_checked_from_its_header(extension):
    pixels = gray(RGB) if extension == ".pgm" else RGB[..., ::-1]
    msg = compressed(pixels, extension)
    assert declared_size(msg.data) == (64, 64)
    with pytest.raises(ImageConversionError, match=OVER_4095):
        compressed_to_rgb(msg, max_pixels=4095)
    assert compressed_to_rgb(msg, max_pixels=4096).shape == (64, 64, 3)


def test_our_pixel_limit_replaces_pils_decompression_bomb_check():
    # PIL's Image.open warns above 89 MP and refuses above 179 MP, with its own message.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert declared_size(png_declaring(10000, 10000), max_pixels=10**9) == (10000, 10000)
        assert declared_size(png_declaring(20000, 20000), max_pixels=10**9) == (20000, 20000)
        with pytest.raises(ImageConversionError, match="20000x20000 = 400000000 pixels, over"):
            declared_size(png_declaring(20000, 20000))


@pytest.mark.parametrize(
    ("pixels", "reason"),
    [
        (np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64), "1-channel float32"),
        (np.full((64, 64), np.nan, dtype=np.float32), "1-channel float32"),
        (np.zeros((64, 64), dtype=np.int16), "1-channel int16"),
        (np.zeros((64, 64), dtype=np.int32), "1-channel int32"),
        # Sample types PIL's header reader does not know are refused before decoding.
        (np.zeros((64, 64), dtype=np.float64), "TIFF header: unknown pixel mode"),
        (np.zeros((64, 64, 3), dtype=np.float32), "TIFF header: unknown pixel mode"),  # LogLuv
    ],
)
def test_compressed_images_with_unsupported_sample_types_are_refused(pixels, reason):
    # A float TIFF used to be taken for 16-bit data and segmented as a black frame.
    with pytest.raises(ImageConversionError) as error:
        compressed_to_rgb(compressed(pixels, ".tiff"))
    assert reason in str(error.value)


@pytest.mark.parametrize("extension", [".png", ".jpg", ".tiff", ".bmp", ".ppm"])
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # PIL's TIFF reader, on damaged tags
def test_damaged_headers_are_refused_or_decoded_but_never_crash(extension):
    data = compressed(RGB[..., ::-1], extension).data
    rng = np.random.default_rng(0)
    damaged = [data[:length] for length in (1, 2, 3, 4, 8, 12, 16, 24, 33, 64, len(data) // 2)]
    for _ in range(40):
        flipped = bytearray(data)
        flipped[rng.integers(0, min(len(data), 64))] ^= 1 << int(rng.integers(0, 8))
        damaged.append(bytes(flipped))
    for candidate in damaged:
        try:
            decoded = compressed_to_rgb(SimpleNamespace(format=extension[1:], data=candidate))
        except ImageConversionError:
            continue
        assert decoded.dtype == np.uint8 and decoded.ndim == 3 and decoded.shape[2] == 3
