"""The FC-CLIP network: variants run; classifiers and ensemble follow the official math."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from fcclip_ros.model.build import build_fcclip, cached_clip_weights
from fcclip_ros.model.classification import TextClassifier, classification_logits, mask_pool
from fcclip_ros.model.config import VARIANTS, FCCLIPConfig, create_clip_model
from fcclip_ros.model.fcclip import FCCLIP, FCCLIPHead, geometric_ensemble

TINY = VARIANTS["tiny"]


def random_classifier(embed_dim: int, synonyms_per_class: list[int], seed: int = 0,
                      ) -> TextClassifier:
    generator = torch.Generator().manual_seed(seed)
    rows = sum(synonyms_per_class)
    embeddings = F.normalize(torch.randn(rows, embed_dim, generator=generator), dim=-1)
    class_of_row = torch.repeat_interleave(torch.arange(len(synonyms_per_class)),
                                           torch.tensor(synonyms_per_class))
    seen = torch.arange(len(synonyms_per_class)) % 2 == 0
    return TextClassifier(embeddings, class_of_row, seen)


def small_images(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_builds_and_segments_a_small_image(name: str) -> None:
    config = VARIANTS[name]
    model = FCCLIP(config)
    classifier = random_classifier(config.embed_dim, [1, 3, 2])
    with torch.inference_mode():
        mask_logits, class_logits = model(small_images()[:1], classifier)
        *outputs, region_embeddings = model(small_images()[:1], classifier,
                                            with_region_embeddings=True)
    assert mask_logits.shape == (1, config.num_queries, 16, 24)
    assert class_logits.shape == (1, config.num_queries, 4)
    assert torch.isfinite(mask_logits).all() and torch.isfinite(class_logits).all()
    # Final logits are log-probabilities over the classes plus void.
    torch.testing.assert_close(class_logits.exp().sum(-1), torch.ones(1, config.num_queries),
                               atol=1e-5, rtol=0)
    # Asking for the OOV branch's region embeddings (768-d for ConvNeXt-L, the CLIP embed dim
    # for ResNets) changes no output.
    assert region_embeddings.shape == (1, config.num_queries, config.embed_dim)
    assert torch.isfinite(region_embeddings).all()
    assert torch.equal(outputs[0], mask_logits) and torch.equal(outputs[1], class_logits)


def test_tiny_forward_is_deterministic_for_a_seed_and_finite() -> None:
    classifier = random_classifier(TINY.embed_dim, [2, 1, 1, 3])
    with torch.inference_mode():
        first = FCCLIP(TINY, seed=3)(small_images(), classifier)
        again = FCCLIP(TINY, seed=3)(small_images(), classifier)
        other = FCCLIP(TINY, seed=4)(small_images(), classifier)
    for a, b in zip(first, again, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(first[0], other[0])


def test_train_mode_keeps_the_clip_backbone_frozen_and_in_eval() -> None:
    model = FCCLIP(TINY).train()
    assert model.sem_seg_head.training
    assert not any(module.training for module in model.backbone.modules())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    # The tiny trunk has stochastic depth: in train mode two passes would differ.
    first = model.backbone(small_images())
    second = model.backbone(small_images())
    for name in ("res2", "res3", "res4", "res5", "clip_vis_dense"):
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0)


def test_backbone_features_have_the_configured_strides_and_channels() -> None:
    model = FCCLIP(TINY)
    features = model.backbone(small_images())
    for (name, stride), channels in zip((("res2", 4), ("res3", 8), ("res4", 16), ("res5", 32)),
                                        TINY.backbone_channels, strict=True):
        assert features[name].shape == (2, channels, 64 // stride, 96 // stride)
    assert torch.equal(features["clip_vis_dense"], features["res5"])  # norm_pre is Identity


def test_max_over_synonyms_equals_a_per_class_loop() -> None:
    synonyms = [3, 1, 4, 2, 1]
    classifier = random_classifier(16, synonyms, seed=1)
    x = torch.randn(2, 7, 16)
    void = torch.randn(1, 16)
    logit_scale = torch.tensor(2.5)
    logits = classification_logits(x, classifier, void, logit_scale)

    scale = min(logit_scale.exp().item(), 100.0)
    text = torch.cat([classifier.embeddings, F.normalize(void, dim=-1)])
    per_row = scale * F.normalize(x, dim=-1) @ text.T
    expected, start = [], 0
    for count in synonyms:
        expected.append(per_row[..., start:start + count].max(-1).values)
        start += count
    expected.append(per_row[..., -1])
    torch.testing.assert_close(logits, torch.stack(expected, dim=-1))
    without_void = classification_logits(x, classifier, None, logit_scale)
    torch.testing.assert_close(without_void, logits[..., :-1])


def test_logit_scale_is_capped_at_100() -> None:
    classifier = random_classifier(8, [1, 1])
    x = classifier.embeddings[None, :1]  # cosine 1 with class 0
    logits = classification_logits(x, classifier, None, torch.tensor(10.0))
    assert logits[0, 0, 0].item() == pytest.approx(100.0, rel=1e-5)


def official_ensemble(in_vocab: torch.Tensor, out_vocab: torch.Tensor, seen: torch.Tensor,
                      alpha: torch.Tensor | float, beta: torch.Tensor | float) -> torch.Tensor:
    """fcclip/fcclip.py's formula, written out: seen classes use alpha, unseen ones beta."""
    p_in = in_vocab[..., :-1].softmax(-1)
    p_out = out_vocab.softmax(-1)
    seen = seen.float()
    scores = ((p_in ** (1 - alpha) * p_out ** alpha).log() * seen
              + (p_in ** (1 - beta) * p_out ** beta).log() * (1 - seen))
    p_void = in_vocab.softmax(-1)[..., -1:]
    return torch.log(torch.cat([scores.softmax(-1) * (1 - p_void), p_void], -1) + 1e-8)


def test_geometric_ensemble_follows_the_formula_for_seen_and_unseen_classes() -> None:
    generator = torch.Generator().manual_seed(5)
    in_vocab = 4 * torch.randn(2, 6, 5, generator=generator)  # 4 classes + void
    out_vocab = 4 * torch.randn(2, 6, 4, generator=generator)
    seen = torch.tensor([True, False, True, False])
    result = geometric_ensemble(in_vocab, out_vocab, seen, 0.4, 0.8)
    torch.testing.assert_close(result, official_ensemble(in_vocab, out_vocab, seen, 0.4, 0.8))
    # Seen class 0 scores 0.6 log p_in + 0.4 log p_out, unseen class 1 0.2 log p_in + 0.8 log p_out
    # (up to a shared constant), so their probability ratio is:
    log_p_in, log_p_out = in_vocab[..., :-1].log_softmax(-1), out_vocab.log_softmax(-1)
    seen_score = 0.6 * log_p_in[..., 0] + 0.4 * log_p_out[..., 0]
    unseen_score = 0.2 * log_p_in[..., 1] + 0.8 * log_p_out[..., 1]
    torch.testing.assert_close(result[..., 0] - result[..., 1], seen_score - unseen_score,
                               rtol=1e-4, atol=1e-4)


def test_valid_mask_ensemble_ignores_clip_for_queries_with_empty_masks() -> None:
    generator = torch.Generator().manual_seed(6)
    in_vocab = 3 * torch.randn(1, 4, 4, generator=generator)
    out_vocab = 3 * torch.randn(1, 4, 3, generator=generator)
    seen = torch.tensor([True, False, True])
    valid = torch.tensor([[True, False, True, False]])
    result = geometric_ensemble(in_vocab, out_vocab, seen, 0.4, 0.8, valid)
    alpha = 0.4 * valid[..., None].float().expand(1, 4, 3)
    beta = 0.8 * valid[..., None].float().expand(1, 4, 3)
    torch.testing.assert_close(result, official_ensemble(in_vocab, out_vocab, seen, alpha, beta))
    # Invalid queries keep the head's own probabilities.
    torch.testing.assert_close(result[0, 1].exp(), in_vocab[0, 1].softmax(-1), atol=1e-6, rtol=0)


def test_mask_pool_averages_features_inside_positive_logits() -> None:
    features = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    logits = -torch.ones(1, 2, 3, 4)
    logits[0, 0, 1, 1:3] = 1.0  # two pixels
    pooled = mask_pool(features, logits)
    torch.testing.assert_close(pooled[0, 0], features[0, :, 1, 1:3].mean(-1))
    torch.testing.assert_close(pooled[0, 1], torch.zeros(2))  # empty mask


def test_attention_mask_blocks_outside_the_mask_and_frees_empty_masks() -> None:
    decoder = FCCLIPHead(TINY).predictor
    logits = -torch.ones(1, 2, 8, 8)
    logits[0, 0, :4] = 1.0  # query 0 covers the top half; query 1 covers nothing
    attn_mask = decoder._attention_mask(logits, torch.Size([4, 4]))
    assert attn_mask.shape == (TINY.num_heads, 2, 16)
    top = torch.arange(16) < 8
    assert torch.equal(attn_mask[:, 0], (~top).expand(TINY.num_heads, 16))
    assert not attn_mask[:, 1].any()


def test_convnext_region_embedding_of_the_whole_image_is_clips_image_embedding() -> None:
    model = FCCLIP(TINY)
    images = small_images()
    dense = model.backbone(images)["clip_vis_dense"]
    whole = torch.ones(2, 1, *dense.shape[-2:])
    regions = model.backbone.region_embeddings(dense, whole)
    with torch.no_grad():
        expected = model.backbone.clip_model.encode_image(images)
    torch.testing.assert_close(regions[:, 0], expected, rtol=1e-4, atol=1e-5)


def test_region_embeddings_are_the_mask_pooled_clip_features_the_classes_came_from() -> None:
    model = FCCLIP(TINY)
    classifier = random_classifier(TINY.embed_dim, [2, 1, 3])
    images = small_images()
    with torch.inference_mode():
        mask_logits, class_logits, regions = model(images, classifier,
                                                   with_region_embeddings=True)
        # The official OOV branch written out: masks resized to stride 32, binary mask pooling
        # of the dense CLIP map, CLIP's own pooled-feature head.
        features = model.backbone(images)
        dense = features["clip_vis_dense"]
        inside = (F.interpolate(mask_logits, size=dense.shape[-2:], mode="bilinear",
                                align_corners=False) > 0).float()
        pooled = torch.einsum("bchw,bqhw->bqc", dense, inside) / (
            inside.sum((-2, -1))[..., None] + 1e-8)
        visual = model.backbone.clip_model.visual
        expected = visual.head(visual.trunk.head(pooled.reshape(-1, dense.shape[1], 1, 1)))
        torch.testing.assert_close(regions, expected.reshape(regions.shape), rtol=0, atol=1e-5)
        # The final class logits are the ensemble of the head's logits and those of exactly these
        # embeddings: cosine x CLIP's scale (capped at 100), max over each class's synonyms.
        _, class_embeddings = model.sem_seg_head(features)
        in_vocab = classification_logits(class_embeddings, classifier,
                                         model.void_embedding.weight,
                                         model.sem_seg_head.predictor.logit_scale)
    scale = model.backbone.clip_model.logit_scale.exp().clamp(max=100)
    synonym_logits = scale * F.normalize(regions, dim=-1) @ classifier.embeddings.T
    out_vocab = torch.stack([synonym_logits[..., classifier.class_of_row == c].max(-1).values
                             for c in range(classifier.num_classes)], dim=-1)
    expected_logits = geometric_ensemble(in_vocab, out_vocab, classifier.seen,
                                         TINY.ensemble_alpha, TINY.ensemble_beta)
    torch.testing.assert_close(class_logits, expected_logits, rtol=0, atol=1e-5)


def test_resnet_region_embedding_attends_only_inside_the_mask() -> None:
    clip_model = create_clip_model(VARIANTS["rn50"])
    model = FCCLIP(VARIANTS["rn50"], clip_model=clip_model)
    dense = model.backbone(small_images()[:1])["clip_vis_dense"]  # (1, 2048, 2, 3)
    masks = -torch.ones(1, 2, 2, 3)
    masks[0, 0, 1, 2] = 1.0  # a single pixel; mask 1 is empty
    regions = model.backbone.region_embeddings(dense, masks)
    # With one pixel to attend to, attention returns that pixel's projected value.
    pool = clip_model.visual.attnpool
    positions = pool.positional_embedding[1:].T.reshape(1, -1, 7, 7)
    positions = F.interpolate(positions, size=(2, 3), mode="bilinear", align_corners=False)
    pixel = dense[0, :, 1, 2] + positions[0, :, 1, 2]
    with torch.no_grad():
        expected = pool.c_proj(pool.v_proj(pixel))
    torch.testing.assert_close(regions[0, 0], expected, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(regions[0, 1]).all()


def test_convnext_large_head_matches_the_official_parameter_layout() -> None:
    config = VARIANTS["convnext_large"]
    head = {f"sem_seg_head.{k}": v for k, v in FCCLIPHead(config).state_dict().items()}
    # With void_embedding: 302 of the official file's 303 keys (the last is the loss's
    # criterion.empty_weight, see test_checkpoint).
    assert len(head) + 1 == 302
    assert sum(v.numel() for v in head.values()) + config.embed_dim == 20_721_601
    expected_shapes = {
        "sem_seg_head.pixel_decoder.input_proj.0.0.weight": (256, 1536, 1, 1),
        "sem_seg_head.pixel_decoder.adapter_1.weight": (256, 192, 1, 1),
        "sem_seg_head.predictor.transformer_self_attention_layers.8.self_attn.in_proj_weight":
            (768, 256),
        "sem_seg_head.predictor.transformer_cross_attention_layers.0.multihead_attn.in_proj_weight":
            (768, 256),
        "sem_seg_head.predictor.transformer_ffn_layers.4.linear1.weight": (2048, 256),
        "sem_seg_head.predictor.query_feat.weight": (250, 256),
        "sem_seg_head.predictor.level_embed.weight": (3, 256),
        "sem_seg_head.predictor._mask_pooling_proj.1.weight": (256, 256),
        "sem_seg_head.predictor.class_embed.layers.2.weight": (768, 256),
        "sem_seg_head.predictor.logit_scale": (),
    }
    for key, shape in expected_shapes.items():
        assert tuple(head[key].shape) == shape, key


def test_variants_follow_the_official_configs() -> None:
    main = VARIANTS["convnext_large"]
    assert (main.clip_model_name, main.clip_pretrained, main.embed_dim) == (
        "convnext_large_d_320", "laion2b_s29b_b131k_ft_soup", 768)
    assert (main.num_queries, main.decoder_layers, main.ensemble_alpha, main.ensemble_beta) == (
        250, 9, 0.4, 0.8)
    assert not main.ensemble_on_valid_mask
    resnets = {name: config for name, config in VARIANTS.items() if name.startswith("rn")}
    assert {name: (c.clip_model_name, c.embed_dim) for name, c in resnets.items()} == {
        "rn50": ("RN50", 1024), "rn101": ("RN101", 512), "rn50x4": ("RN50x4", 640),
        "rn50x16": ("RN50x16", 768), "rn50x64": ("RN50x64", 1024)}
    assert all(c.ensemble_on_valid_mask and c.quick_gelu and c.family == "resnet"
               and c.clip_pretrained == "openai" for c in resnets.values())


def test_config_rejects_an_unknown_backbone_family() -> None:
    with pytest.raises(ValueError, match="family"):
        FCCLIPConfig(family="vit")


def test_model_refuses_a_clip_that_does_not_match_its_config() -> None:
    clip_model = create_clip_model(TINY)
    with pytest.raises(ValueError, match="embed_dim"):
        FCCLIP(VARIANTS["convnext_large"], clip_model=clip_model)


def test_clip_weights_load_from_a_file(tmp_path) -> None:
    source = create_clip_model(TINY, seed=1)
    path = tmp_path / "clip.pt"
    torch.save(source.state_dict(), path)
    loaded = build_fcclip("tiny", "random", str(path), seed=2).model.backbone.clip_model
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_clip_weights_load_from_an_openai_style_torchscript_archive(tmp_path) -> None:
    source = create_clip_model(TINY, seed=1)
    # OpenAI's archives keep the causal text mask as a constant, not in the state dict.
    attn_mask = source.attn_mask
    del source._buffers["attn_mask"]
    source.attn_mask = attn_mask
    example = (torch.zeros(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long))
    path = tmp_path / "RN50.pt"
    torch.jit.save(torch.jit.trace(source, example, check_trace=False), path)
    loaded = build_fcclip("tiny", "random", str(path), seed=2).model.backbone.clip_model
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_clip_tag_missing_from_the_cache_fails_fast_instead_of_downloading(tmp_path) -> None:
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="not in the local cache"):
        cached_clip_weights("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup", str(tmp_path))
    assert time.monotonic() - start < 5.0
    with pytest.raises(ValueError, match="openai"):
        cached_clip_weights("RN50", "no_such_tag", str(tmp_path))


def test_clip_tag_resolves_from_the_local_hugging_face_cache(tmp_path) -> None:
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--laion--CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    weights = repo / "snapshots" / revision / "open_clip_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"stand-in")
    found = cached_clip_weights("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup",
                                str(tmp_path))
    assert found == str(weights)
