"""Image pre-processing exactly as FC-CLIP's detectron2 test pipeline does it.

detectron2 resizes the uint8 image with PIL (bilinear, antialiased when shrinking) to the
ResizeShortestEdge size, the model normalises it with CLIP's mean/std on the 0-255 scale and
ImageList zero-pads it bottom/right to a multiple of 32. Any deviation (another resampler, padding
before normalising) changes the network's input and therefore its masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from fcclip_ros.model.config import PIXEL_MEAN, PIXEL_STD

SIZE_DIVISIBILITY = 32  # MODEL.MASK_FORMER.SIZE_DIVISIBILITY


@dataclass(frozen=True)
class PreparedBatch:
    """Several images padded to one common size, as detectron2's ImageList batches them."""

    tensor: torch.Tensor  # (B, 3, Hp, Wp) float32, normalised, zero-padded
    resized_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.resized_sizes)


def resized_size(height: int, width: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """Output size of detectron2's ResizeShortestEdge for one image.

    The short side goes to `short_side`; if the long side would then exceed `max_long_side`,
    both are scaled down so it does not; each side is rounded with int(x + 0.5).
    `short_side` 0 means no resize (detectron2's NoOpTransform).

    One deviation: a side is never rounded below 1 pixel. detectron2 would give 0 for frames as
    thin as 4000x1 and then fail to resize; every size it can handle is unchanged.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if short_side < 0 or max_long_side <= 0:
        raise ValueError(
            f"short_side must be >= 0 and max_long_side > 0, got {short_side}, {max_long_side}"
        )
    if short_side == 0:
        return height, width
    scale = short_side * 1.0 / min(height, width)
    if height < width:
        new_h, new_w = float(short_side), scale * width
    else:
        new_h, new_w = scale * height, float(short_side)
    if max(new_h, new_w) > max_long_side:
        scale = max_long_side * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return max(int(new_h + 0.5), 1), max(int(new_w + 0.5), 1)


def padded_input_size(height: int, width: int, short_side: int, max_long_side: int,
                      size_divisibility: int = SIZE_DIVISIBILITY) -> tuple[int, int]:
    """(Hp, Wp) of the network input for one (height, width) image: resized, then padded."""
    stride = max(size_divisibility, 1)
    resized = resized_size(height, width, short_side, max_long_side)
    return tuple(-(-side // stride) * stride for side in resized)


def resize_image(image_rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 (H, W, 3) image to `size` (h, w) with PIL bilinear, as detectron2 does.

    Returns the input itself when the size is unchanged (PIL would return an identical copy).
    """
    if tuple(image_rgb.shape[:2]) == tuple(size):
        return image_rgb
    resized = Image.fromarray(image_rgb).resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(resized)


def prepare_batch(
    images_rgb: Sequence[np.ndarray],
    short_side: int,
    max_long_side: int,
    device: torch.device | str = "cpu",
    size_divisibility: int = SIZE_DIVISIBILITY,
) -> PreparedBatch:
    """Resize, normalise and pad RGB uint8 images into one batch on `device`.

    All images are padded to the largest resized height and width, rounded up to a multiple of
    `size_divisibility`, so that several cameras can share one forward pass.
    """
    if len(images_rgb) == 0:
        raise ValueError("prepare_batch needs at least one image")
    for image in images_rgb:
        _check_image(image)
    resized = [
        resize_image(image, resized_size(*image.shape[:2], short_side, max_long_side))
        for image in images_rgb
    ]
    stride = max(size_divisibility, 1)
    padded_h = -(-max(image.shape[0] for image in resized) // stride) * stride
    padded_w = -(-max(image.shape[1] for image in resized) // stride) * stride

    mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32, device=device).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, dtype=torch.float32, device=device).view(3, 1, 1)
    batch = torch.zeros(len(resized), 3, padded_h, padded_w, dtype=torch.float32, device=device)
    for slot, image in zip(batch, resized, strict=True):
        # Upload as uint8 (4x less to copy), then (x - mean) / std in float32 as the model does.
        # np.require copies only arrays torch cannot wrap (strided, or read-only like PIL's).
        pixels = torch.from_numpy(np.require(image, requirements=["C", "W"])).to(device)
        pixels = pixels.permute(2, 0, 1)
        slot[:, : image.shape[0], : image.shape[1]] = (pixels.float() - mean) / std
    return PreparedBatch(
        tensor=batch,
        resized_sizes=[(int(image.shape[0]), int(image.shape[1])) for image in resized],
        original_sizes=[(int(image.shape[0]), int(image.shape[1])) for image in images_rgb],
    )


def _check_image(image: np.ndarray) -> None:
    """Reject what the network cannot take with a message that says what was received."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
