"""Pre-processing reproduces detectron2's test-time resize, FC-CLIP's normalisation and padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fcclip_ros.preprocess import (
    PIXEL_MEAN,
    PIXEL_STD,
    prepare_batch,
    resize_image,
    resized_size,
)

pytestmark = pytest.mark.fast

MEAN = np.array(PIXEL_MEAN, dtype=np.float32)
STD = np.array(PIXEL_STD, dtype=np.float32)


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def unnormalised(tensor: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The (h, w, 3) pixel values inside the padding, back on the 0-255 scale."""
    pixels = tensor[0, :, : size[0], : size[1]].permute(1, 2, 0).numpy()
    return pixels * STD + MEAN


# (height, width, short_side, max_long_side) -> size, each worked out by hand from the rule:
# scale = short / min(h, w); if the long side exceeds the cap, scale both down to it;
# round each side with int(x + 0.5).
@pytest.mark.parametrize(
    ("height", "width", "short_side", "max_long_side", "expected"),
    [
        (480, 640, 800, 1333, (800, 1067)),  # 640 * 5/3 = 1066.67
        (640, 480, 800, 1333, (1067, 800)),  # portrait, same numbers
        (500, 500, 800, 1333, (800, 800)),  # square
        (1200, 1600, 600, 1000, (600, 800)),  # downscale, no cap
        (1080, 1920, 800, 1333, (750, 1333)),  # 1422.2 > 1333 -> 800 * 1333/1422.2 = 749.8
        (2000, 500, 800, 1333, (1333, 333)),  # 3200 > 1333 -> 800 * 1333/3200 = 333.25
        (10, 30, 20, 50, (17, 50)),  # 60 > 50 -> 20 * 50/60 = 16.67
        (100, 400, 200, 400, (100, 400)),  # cap brings it back to the input size
        (4, 5, 2, 100, (2, 3)),  # 2.5 rounds up (Python's round() would give 2)
        (4, 9, 2, 100, (2, 5)),  # 4.5 rounds up (round() would give 4)
        (4, 7, 2, 100, (2, 4)),  # 3.5 rounds up
        (1024, 2048, 1024, 2560, (1024, 2048)),  # Cityscapes setting: unchanged
        (333, 777, 0, 1333, (333, 777)),  # short side 0: detectron2's no-op
        (3, 4000, 800, 1333, (1, 1333)),  # 800 * 1333/1066667 = 0.9997 rounds to 1 anyway
    ],
)
def test_resized_size_follows_resize_shortest_edge(
    height: int, width: int, short_side: int, max_long_side: int, expected: tuple[int, int]
) -> None:
    assert resized_size(height, width, short_side, max_long_side) == expected


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (1, 4000, (1, 1333)),  # detectron2: 800 * 1333/3200000 = 0.33 rounds to 0
        (4000, 1, (1333, 1)),
        (2, 10000, (1, 1333)),  # 0.27
        (1, 2000, (1, 1333)),  # 0.67 rounds to 1 as in detectron2
    ],
)
def test_extreme_aspect_ratios_keep_at_least_one_pixel(
    height: int, width: int, expected: tuple[int, int]
) -> None:
    assert resized_size(height, width, 800, 1333) == expected
    prepared = prepare_batch([random_image(height, width)], short_side=800, max_long_side=1333)
    assert prepared.resized_sizes == [expected]
    assert prepared.original_sizes == [(height, width)]
    assert prepared.tensor.shape[-2:] == tuple(-(-side // 32) * 32 for side in expected)


def test_resized_size_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        resized_size(0, 10, 800, 1333)
    with pytest.raises(ValueError):
        resized_size(10, 10, -1, 1333)


def test_no_resize_when_short_side_equals_the_images() -> None:
    image = random_image(48, 64)
    assert resize_image(image, (48, 64)) is image
    prepared = prepare_batch([image], short_side=48, max_long_side=1333)
    assert prepared.resized_sizes == prepared.original_sizes == [(48, 64)]
    np.testing.assert_allclose(unnormalised(prepared.tensor, (48, 64)), image, atol=1e-3)


def test_normalises_with_clip_statistics_then_zero_pads_to_multiple_of_32() -> None:
    image = random_image(50, 70)
    prepared = prepare_batch([image], short_side=50, max_long_side=1000)
    assert prepared.tensor.shape == (1, 3, 64, 96)
    assert prepared.tensor.dtype == torch.float32
    expected = ((image.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)
    np.testing.assert_allclose(prepared.tensor[0, :, :50, :70].numpy(), expected, rtol=1e-6)
    assert not prepared.tensor[..., 50:, :].any()
    assert not prepared.tensor[..., :, 70:].any()


def test_size_already_multiple_of_32_gets_no_padding() -> None:
    prepared = prepare_batch([random_image(64, 96)], short_side=64, max_long_side=1000)
    assert prepared.tensor.shape == (1, 3, 64, 96)


@pytest.mark.parametrize(("short_side", "expected"), [(40, (40, 60)), (90, (90, 135))])
def test_resize_is_pil_bilinear_on_uint8(short_side: int, expected: tuple[int, int]) -> None:
    image = random_image(60, 90, seed=1)
    prepared = prepare_batch([image], short_side=short_side, max_long_side=1333)
    assert prepared.resized_sizes == [expected]
    assert prepared.original_sizes == [(60, 90)]
    reference = np.asarray(Image.fromarray(image).resize(expected[::-1], Image.BILINEAR))
    np.testing.assert_allclose(unnormalised(prepared.tensor, expected), reference, atol=1e-3)


def test_downscaling_is_antialiased_like_pil_not_plain_bilinear() -> None:
    image = random_image(60, 90, seed=1)
    prepared = prepare_batch([image], short_side=40, max_long_side=1333)
    plain = torch.nn.functional.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(40, 60), mode="bilinear"
    )[0].permute(1, 2, 0)
    assert np.abs(unnormalised(prepared.tensor, (40, 60)) - plain.numpy()).max() > 10.0


def test_batch_pads_every_image_to_the_largest_size() -> None:
    small, large = random_image(40, 50, seed=2), random_image(70, 45, seed=3)
    batch = prepare_batch([small, large], short_side=40, max_long_side=1000)
    assert len(batch) == 2
    assert batch.resized_sizes == [(40, 50), (62, 40)]  # 70 * 40/45 = 62.2
    assert batch.original_sizes == [(40, 50), (70, 45)]
    assert batch.tensor.shape == (2, 3, 64, 64)
    for index, image in enumerate([small, large]):
        single = prepare_batch([image], short_side=40, max_long_side=1000)
        h, w = single.resized_sizes[0]
        torch.testing.assert_close(batch.tensor[index, :, :h, :w], single.tensor[0, :, :h, :w])
        assert not batch.tensor[index, :, h:, :].any()
        assert not batch.tensor[index, :, :, w:].any()


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8), dtype=np.uint8),
        np.zeros((8, 8, 4), dtype=np.uint8),
        np.zeros((8, 8, 3), dtype=np.float32),
        np.zeros((0, 8, 3), dtype=np.uint8),
    ],
    ids=["gray", "rgba", "float", "empty"],
)
def test_bad_images_are_rejected_with_a_clear_error(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected"):
        prepare_batch([image], short_side=8, max_long_side=100)
