"""Pixel decoder: deformable attention maths, official checkpoint layout, shapes and precision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fcclip_ros.model.deformable_attention import (
    MultiScaleDeformableAttention,
    multi_scale_deformable_attention,
)
from fcclip_ros.model.pixel_decoder import MSDeformAttnPixelDecoder, pixel_centres
from fcclip_ros.model.position_encoding import PositionEmbeddingSine

pytestmark = pytest.mark.fast

CONVNEXT_L_CHANNELS = {"res2": 192, "res3": 384, "res4": 768, "res5": 1536}
SMALL_CHANNELS = {"res2": 16, "res3": 24, "res4": 32, "res5": 48}
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def small_decoder(**kwargs) -> MSDeformAttnPixelDecoder:
    args = dict(conv_dim=64, mask_dim=32, num_heads=4, num_encoder_layers=2,
                encoder_dim_feedforward=128, num_points=2)
    return MSDeformAttnPixelDecoder(SMALL_CHANNELS, **(args | kwargs)).eval()


def backbone_features(batch: int, height: int, width: int) -> dict[str, torch.Tensor]:
    return {
        name: torch.randn(batch, channels, height // STRIDES[name], width // STRIDES[name])
        for name, channels in SMALL_CHANNELS.items()
    }


def per_point_deformable_attention(value, shapes, locations, weights) -> torch.Tensor:
    """Direct definition: bilinear interpolation between pixel centres, zeros outside the map."""
    batch, _, heads, head_dim = value.shape
    queries, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    value, locations, weights = value.double(), locations.double(), weights.double()
    starts = [sum(h * w for h, w in shapes[:level]) for level in range(levels)]
    out = torch.zeros(batch, queries, heads, head_dim, dtype=torch.float64)
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                for level, (height, width) in enumerate(shapes):
                    level_map = value[b, starts[level]:starts[level] + height * width, m]
                    level_map = level_map.reshape(height, width, head_dim)
                    for p in range(points):
                        # pixel (i, j) has its centre at normalised ((j + 0.5) / W, (i + 0.5) / H)
                        x = locations[b, q, m, level, p, 0].item() * width - 0.5
                        y = locations[b, q, m, level, p, 1].item() * height - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(head_dim, dtype=torch.float64)
                        for yi in (y0, y0 + 1):
                            for xi in (x0, x0 + 1):
                                if 0 <= yi < height and 0 <= xi < width:
                                    corner = (1 - abs(x - xi)) * (1 - abs(y - yi))
                                    sample += corner * level_map[yi, xi]
                        out[b, q, m] += weights[b, q, m, level, p] * sample
    return out.reshape(batch, queries, heads * head_dim)


@pytest.mark.parametrize("shapes_as_tensor", [False, True])
def test_grid_sample_attention_equals_per_point_bilinear_sampling(shapes_as_tensor: bool) -> None:
    torch.manual_seed(0)
    shapes = [(3, 5), (4, 2), (6, 7)]
    batch, queries, heads, head_dim, points = 2, 5, 2, 3, 3
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, head_dim)
    # a quarter of the range lies outside the map, where samples must fade to zero
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2) * 1.5 - 0.25
    weights = torch.rand(batch, queries, heads, len(shapes), points)

    expected = per_point_deformable_attention(value, shapes, locations, weights)
    spatial_shapes = torch.tensor(shapes) if shapes_as_tensor else shapes
    actual = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)

    assert actual.shape == (batch, queries, heads * head_dim)
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-5)


def test_attention_computes_in_half_precision_values_dtype() -> None:
    torch.manual_seed(0)
    shapes = [(4, 6), (2, 3)]
    value = torch.randn(1, 30, 2, 8)
    locations = torch.rand(1, 7, 2, 2, 3, 2)  # float32 locations and weights, as the module has
    weights = torch.rand(1, 7, 2, 2, 3).softmax(-1)

    half = multi_scale_deformable_attention(value.half(), shapes, locations, weights)

    assert half.dtype == torch.float16
    expected = multi_scale_deformable_attention(value, shapes, locations, weights)
    torch.testing.assert_close(half.float(), expected, rtol=0, atol=2e-2)


def test_initial_sampling_offsets_are_official_rings() -> None:
    attention = MultiScaleDeformableAttention(d_model=64, n_levels=3, n_heads=8, n_points=4)
    directions = torch.tensor(
        [[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]], dtype=torch.float32
    )
    distances = torch.arange(1, 5, dtype=torch.float32)
    expected = directions[:, None, None, :] * distances[None, None, :, None]  # (heads, 1, P, 2)

    offsets = attention.sampling_offsets.bias.detach().view(8, 3, 4, 2)
    torch.testing.assert_close(offsets, expected.expand(8, 3, 4, 2), rtol=0, atol=1e-5)
    assert not attention.sampling_offsets.weight.any()
    assert not attention.attention_weights.weight.any()
    assert not attention.attention_weights.bias.any()  # uniform attention over levels x points


def test_initialised_heads_sample_one_pixel_away_from_pixel_centres() -> None:
    """Offsets are in pixels of a non-square map, x along width: head h reads its neighbour."""
    torch.manual_seed(0)
    height, width, heads = 3, 5, 4
    attention = MultiScaleDeformableAttention(d_model=heads, n_levels=1, n_heads=heads, n_points=1)
    with torch.no_grad():
        for projection in (attention.value_proj, attention.output_proj):
            projection.weight.copy_(torch.eye(heads))
            projection.bias.zero_()
    feature_map = torch.randn(heads, height, width)
    tokens = feature_map.flatten(1).T[None]  # (1, H*W, C); channel h is head h's value
    reference = pixel_centres([(height, width)], torch.device("cpu"))[None, :, None, :]

    output = attention(tokens, reference, tokens, [(height, width)])

    padded = F.pad(feature_map, (1, 1, 1, 1))
    neighbours = {0: (1, 0), 1: (0, 1), 2: (-1, 0), 3: (0, -1)}  # head -> (dx, dy) in pixels
    expected = torch.stack([
        padded[head, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
        for head, (dx, dy) in neighbours.items()
    ])
    torch.testing.assert_close(output[0].T.reshape(heads, height, width), expected)


def official_layout(channels: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``sem_seg_head.pixel_decoder.*`` in the official checkpoint (defaults)."""
    dim, ffn, offsets, weights = 256, 1024, 8 * 3 * 4 * 2, 8 * 3 * 4
    layout: dict[str, tuple[int, ...]] = {}
    for index, name in enumerate(("res5", "res4", "res3")):
        layout |= {
            f"input_proj.{index}.0.weight": (dim, channels[name], 1, 1),
            f"input_proj.{index}.0.bias": (dim,),
            f"input_proj.{index}.1.weight": (dim,),
            f"input_proj.{index}.1.bias": (dim,),
        }
    layout["transformer.level_embed"] = (3, dim)
    for index in range(6):
        layer = f"transformer.encoder.layers.{index}."
        for name, shape in {
            "self_attn.sampling_offsets": (offsets, dim),
            "self_attn.attention_weights": (weights, dim),
            "self_attn.value_proj": (dim, dim),
            "self_attn.output_proj": (dim, dim),
            "linear1": (ffn, dim),
            "linear2": (dim, ffn),
            "norm1": (dim,),
            "norm2": (dim,),
        }.items():
            layout[layer + name + ".weight"] = shape
            layout[layer + name + ".bias"] = (shape[0],)
    layout |= {
        "mask_features.weight": (dim, dim, 1, 1),
        "mask_features.bias": (dim,),
        "adapter_1.weight": (dim, channels["res2"], 1, 1),
        "adapter_1.norm.weight": (dim,),
        "adapter_1.norm.bias": (dim,),
        "layer_1.weight": (dim, dim, 3, 3),
        "layer_1.norm.weight": (dim,),
        "layer_1.norm.bias": (dim,),
    }
    return layout


def test_state_dict_matches_official_convnext_large_layout() -> None:
    decoder = MSDeformAttnPixelDecoder(CONVNEXT_L_CHANNELS)
    state = decoder.state_dict()

    assert {key: tuple(value.shape) for key, value in state.items()} == official_layout(
        CONVNEXT_L_CHANNELS
    )
    assert sum(value.numel() for value in state.values()) == 5_790_144
    assert sum(p.numel() for p in decoder.parameters()) == 5_790_144


def test_outputs_have_strides_4_to_32_for_non_square_input() -> None:
    torch.manual_seed(0)
    decoder = small_decoder()
    features = backbone_features(batch=2, height=96, width=160)  # res2 24x40 ... res5 3x5

    with torch.no_grad():
        mask_features, multi_scale = decoder(features)
        single_mask_features, _ = decoder({k: v[1:] for k, v in features.items()})

    assert mask_features.shape == (2, 32, 24, 40)
    assert [tuple(m.shape) for m in multi_scale] == [(2, 64, 3, 5), (2, 64, 6, 10), (2, 64, 12, 20)]
    # batch entries never mix (head/batch flattening inside the attention is undone correctly)
    torch.testing.assert_close(mask_features[1:], single_mask_features)


def test_common_stride_8_skips_the_res2_step() -> None:
    decoder = small_decoder(common_stride=8)
    features = backbone_features(batch=1, height=96, width=160)
    del features["res2"]

    with torch.no_grad():
        mask_features, multi_scale = decoder(features)

    assert mask_features.shape == (1, 32, 12, 20)
    assert [tuple(m.shape[-2:]) for m in multi_scale] == [(3, 5), (6, 10), (12, 20)]
    assert not any(key.startswith(("adapter_1", "layer_1")) for key in decoder.state_dict())
    with pytest.raises(ValueError):
        small_decoder(common_stride=2)


def test_runs_in_float32_under_bfloat16_autocast() -> None:
    torch.manual_seed(0)
    decoder = small_decoder()
    features = {k: v.bfloat16() for k, v in backbone_features(batch=1, height=64, width=96).items()}

    with torch.no_grad():
        expected_masks, expected_maps = decoder({k: v.float() for k, v in features.items()})
        with torch.autocast("cpu", dtype=torch.bfloat16):
            masks, maps = decoder(features)

    assert masks.dtype == torch.float32
    assert all(m.dtype == torch.float32 for m in maps)
    # bf16 matmuls would be off by ~1e-2; full precision agrees with the plain fp32 run
    torch.testing.assert_close(masks, expected_masks)
    for actual, expected in zip(maps, expected_maps, strict=True):
        torch.testing.assert_close(actual, expected)


def test_position_encoding_is_y_then_x_in_unit_range() -> None:
    encoding = PositionEmbeddingSine(num_pos_feats=16)
    pos = encoding(torch.zeros(2, 3, 5, 7, dtype=torch.bfloat16))

    assert pos.shape == (2, 32, 5, 7)
    assert pos.dtype == torch.float32
    assert pos.abs().max() <= 1
    y_part, x_part = pos[:, :16], pos[:, 16:]
    assert torch.equal(y_part, y_part[..., :1].expand_as(y_part))  # constant along a row
    assert not torch.equal(y_part, y_part[:, :, :1].expand_as(y_part))
    assert torch.equal(x_part, x_part[:, :, :1].expand_as(x_part))  # constant along a column
    assert not torch.equal(x_part, x_part[..., :1].expand_as(x_part))
    # channel pairs interleave sin and cos of the same angle
    torch.testing.assert_close(pos[:, 0::2] ** 2 + pos[:, 1::2] ** 2, torch.ones(2, 16, 5, 7))


def test_position_encoding_uses_coordinates_relative_to_map_size() -> None:
    encoding = PositionEmbeddingSine(num_pos_feats=8)
    small = encoding(torch.zeros(1, 1, 4, 4))
    large = encoding(torch.zeros(1, 1, 8, 8))

    # row 2 of 4 and row 4 of 8 sit at the same relative height (1-based, as cumsum counts)
    torch.testing.assert_close(small[0, :8, 1, 0], large[0, :8, 3, 0])
    torch.testing.assert_close(small[0, 8:, 0, 3], large[0, 8:, 0, 7])
    with pytest.raises(ValueError):
        PositionEmbeddingSine(normalize=False, scale=1.0)
