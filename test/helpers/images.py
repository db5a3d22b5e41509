"""Raw camera images as drivers lay them out: Image-like messages with any row padding and byte
order, 16-bit colour, YUV 4:2:2 and Bayer mosaics, made independently of fcclip_ros."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


def message(pixels: np.ndarray, encoding: str, *, padding: int = 0, big_endian: bool = False):
    """An Image-like object holding `pixels` (H, W[, C]) with `padding` spare bytes per row."""
    pixels = pixels.astype(pixels.dtype.newbyteorder(">" if big_endian else "<"))
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    padded = np.pad(rows, ((0, 0), (0, padding)), constant_values=0xAB)
    return SimpleNamespace(
        height=pixels.shape[0],
        width=pixels.shape[1],
        encoding=encoding,
        is_bigendian=int(big_endian),
        step=padded.shape[1],
        data=padded.tobytes(),
    )


def to_16bit(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.uint16) * 257  # 0..255 -> 0..65535 full scale


def bt601_yuv(rgb: np.ndarray) -> np.ndarray:
    """RGB -> video-range BT.601 Y, U, V planes (what YUV 4:2:2 cameras send)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return np.clip(np.rint(np.stack([y, u, v], -1)), 0, 255).astype(np.uint8)


def pack_422(rgb: np.ndarray, order: str) -> np.ndarray:
    """Pack as 4:2:2 with chroma of pixel pairs averaged; `order` is "uyvy" or "yuyv"."""
    yuv = bt601_yuv(rgb)
    chroma = yuv[:, 0::2, 1:].astype(np.uint16) + yuv[:, 1::2, 1:]
    chroma = (chroma // 2).astype(np.uint8)  # (H, W/2, [U, V])
    out = np.empty((*rgb.shape[:2], 2), np.uint8)
    luma_channel = 1 if order == "uyvy" else 0
    out[..., luma_channel] = yuv[..., 0]
    out[:, 0::2, 1 - luma_channel] = chroma[..., 0]
    out[:, 1::2, 1 - luma_channel] = chroma[..., 1]
    return out


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample one channel per pixel in the 2x2 `pattern` (e.g. "rggb"), as a Bayer sensor does."""
    out = np.empty(rgb.shape[:2], rgb.dtype)
    for index, colour in enumerate(pattern):
        row, col = divmod(index, 2)
        out[row::2, col::2] = rgb[row::2, col::2, "rgb".index(colour)]
    return out
