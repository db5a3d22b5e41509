"""What a vocabulary swap costs: cold vs warm embedding cache, truncated vs full-length encoding.

For each preset, in one run on one model (random weights of the real architecture):
- cold: a new embedder on an empty cache directory encodes every synonym;
- warm (disk): a new embedder on the cache the cold one left (a restarted node);
- warm (memory): the same embedder again (a swap back to an earlier vocabulary).
Then the official procedure (every prompt through ``encode_text`` at the full 77 tokens, chunks
of 128 in order) against ours (chunks sorted by length, each cut after its longest prompt), on
the same synonyms, with the largest difference between the two classifiers. Every figure is
the fastest of --repeats runs.

    .venv/bin/python bench/bench_vocabulary.py [--model tiny|convnext_large|rn50...]
        [--presets ade20k lvis] [--max-classes N]

The text tower dominates; on CPU the real ConvNeXt-L tower needs --max-classes to finish soon.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import open_clip
import torch

from fcclip_ros.model.config import CUSTOM_CLIP_ARCHITECTURES, VARIANTS, create_clip_model
from fcclip_ros.text_embeddings import TEMPLATES, TextEmbedder
from fcclip_ros.vocabulary import PRESETS, Vocabulary


def official_classifier(model: torch.nn.Module, tokenizer, synonyms: list[str]) -> torch.Tensor:
    """FCCLIP.get_text_classifier: full-length encode_text in chunks of 128 prompts."""
    prompts = [template.format(s) for s in synonyms for template in TEMPLATES]
    with torch.no_grad():
        features = torch.cat(
            [
                model.encode_text(tokenizer(prompts[i : i + 128]))
                for i in range(0, len(prompts), 128)
            ]
        )
    features = torch.nn.functional.normalize(features, dim=-1)
    features = features.view(len(synonyms), len(TEMPLATES), -1).mean(dim=1)
    return torch.nn.functional.normalize(features, dim=-1)


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def refuse_to_encode(prompts: list[str]) -> torch.Tensor:
    """The tokenizer of an embedder that must find every synonym in the cache."""
    raise AssertionError(f"the warm cache missed {len(prompts) // len(TEMPLATES)} synonyms")


def cache_timings(model, tokenizer, name: str, vocabulary: Vocabulary) -> tuple[float, ...]:
    """Seconds for the classifier: cold, then warm from disk, then warm from memory."""
    with tempfile.TemporaryDirectory() as cache_dir:
        cold_embedder = TextEmbedder(model, tokenizer, name, cache_dir)
        _, cold = timed(cold_embedder.classifier, vocabulary)
        _, memory = timed(cold_embedder.classifier, vocabulary)
        warm_embedder = TextEmbedder(model, refuse_to_encode, name, cache_dir)
        _, disk = timed(warm_embedder.classifier, vocabulary)
    return cold, disk, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="tiny",
        choices=sorted(VARIANTS),
        help="FC-CLIP variant whose CLIP text tower is used (default tiny)",
    )
    parser.add_argument("--presets", nargs="+", default=["ade20k", "lvis"], choices=PRESETS)
    parser.add_argument(
        "--max-classes", type=int, default=None, help="use only the first N classes of each preset"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs per figure; the fastest is reported (default 3)",
    )
    args = parser.parse_args()

    variant = VARIANTS[args.model]
    model = create_clip_model(variant)
    name = variant.clip_model_name
    tokenizer = (
        open_clip.tokenizer.SimpleTokenizer()
        if name in CUSTOM_CLIP_ARCHITECTURES
        else open_clip.get_tokenizer(name)
    )
    print(
        f"model {args.model} ({name}), {torch.get_num_threads()} CPU threads, "
        f"{len(TEMPLATES)} templates per synonym"
    )
    print(
        f"{'preset':<10} {'classes':>7} {'synonyms':>8} {'cold s':>8} {'disk s':>8} "
        f"{'memory s':>9} {'cold/disk':>9} {'cold/memory':>11} "
        f"{'full s':>8} {'ours s':>8} {'full/ours':>9} {'max diff':>9}"
    )
    for preset in args.presets:
        classes = Vocabulary.from_preset(preset).classes[: args.max_classes]
        vocabulary = Vocabulary(classes, preset=preset)
        synonyms = list(dict.fromkeys(s for c in classes for s in c.synonyms))
        runs = []
        for _ in range(args.repeats):  # interleaved, so load changes hit every figure alike
            full_rows, full = timed(official_classifier, model, tokenizer, synonyms)
            ours_rows, ours = timed(TextEmbedder(model, tokenizer, name).embed, synonyms)
            runs.append((*cache_timings(model, tokenizer, name, vocabulary), full, ours))
        cold, disk, memory, full, ours = (min(column) for column in zip(*runs, strict=True))
        difference = (full_rows - ours_rows).abs().max().item()
        print(
            f"{preset:<10} {len(classes):>7} {len(synonyms):>8} {cold:>8.3f} {disk:>8.4f} "
            f"{memory:>9.5f} {cold / disk:>9.0f} {cold / memory:>11.0f} "
            f"{full:>8.3f} {ours:>8.3f} {full / ours:>9.1f} {difference:>9.1e}"
        )


if __name__ == "__main__":
    main()
