"""Seconds per post-processing step on a realistic 320^3 probability map, on one CPU core.

The map is built from a synthetic chunk (``scrollseg.data.synth.synth_chunk``): its recto
surfaces, blurred as a network's output is, scaled by a smooth confidence field that dips
below the threshold in patches (holes in the sheets) and overlaid with smooth clutter that
rises above it in places (fragments). Every step runs on the previous step's output, in
the order of a full pipeline: the recto-face choice (on the probabilities and the chunk's
image), hysteresis, remove_dust, plug_holes, close_sheets, fill_cavities; each is timed
``--repeats`` times and the median kept.

Run: ``taskset -c 0 python benchmarks/bench_postprocess.py [--size 320] [--repeats 3] [--score]``
(the script pins itself to one core when started on more). ``--score`` also prints the
leaderboard score of each step's output against the chunk's label (about 10 s a step).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cc3d  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from scrollseg.config import InferenceConfig  # noqa: E402
from scrollseg.data.synth import smooth_field, synth_chunk  # noqa: E402
from scrollseg.inference.postprocess import STEPS, foreground, postprocess  # noqa: E402
from scrollseg.inference.recto import keep_recto_face  # noqa: E402


def probability_map(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probability float32, label uint8, image uint8) of one synthetic chunk of ``size``^3."""
    rng = np.random.default_rng(seed)
    image, label = synth_chunk((size,) * 3, rng)
    surface = ndimage.gaussian_filter((label == 1).astype(np.float32), 1.0) * 2.2
    confidence = 0.75 + 0.5 * smooth_field(label.shape, rng, 10)
    clutter = 0.45 * smooth_field(label.shape, rng, 4) + 0.08 * rng.standard_normal(label.shape, dtype=np.float32)
    return np.clip(surface * confidence + clutter, 0, 1).astype(np.float32), label, image


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--score", action="store_true")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[0]})
    cfg = InferenceConfig(hysteresis_low=0.3, postprocess=list(STEPS), recto_context=32.0)

    warm = np.random.default_rng(0).random((24, 24, 24), dtype=np.float32)
    postprocess(warm, cfg, (warm * 255).astype(np.uint8))  # compile the kernels
    prob, label, image = probability_map(args.size)
    print(f"{args.size}^3 probability map, {cfg.recto_context=}, {cfg.threshold=}, {cfg.hysteresis_low=}, {cfg.min_component=}, "
          f"{cfg.hole_max=}, {cfg.close_radius=}; CPU {sorted(os.sched_getaffinity(0))}, median of {args.repeats}")

    seconds, _ = timed(lambda: foreground(prob, cfg.threshold), args.repeats)
    print(f"{'(threshold only)':16s} {seconds:7.3f} s")
    recto_seconds, recto_prob = timed(lambda: keep_recto_face(prob, image, cfg.recto_context), args.repeats)
    rows = [("recto face", recto_seconds, recto_prob > cfg.threshold)]
    seconds, mask = timed(lambda: foreground(recto_prob, cfg.threshold, cfg.hysteresis_low), args.repeats)
    rows.append(("hysteresis", seconds, mask))
    for name in cfg.postprocess:
        seconds, mask = timed(lambda: STEPS[name](mask, cfg), args.repeats)
        rows.append((name, seconds, mask))
    previous = 0
    for name, seconds, out in rows:
        voxels = int(out.sum())
        components = cc3d.connected_components(out, connectivity=6, return_N=True)[1]
        line = f"{name:16s} {seconds:7.3f} s   {voxels - previous:+10d} voxels   {components:6d} components"
        if args.score:
            from scrollseg.metrics.leaderboard import score_volume

            s = score_volume(label, out)
            line += f"   leaderboard {s.leaderboard:.4f} topo {s.topo:.4f} dice {s.surface_dice:.4f} voi {s.voi_score:.4f}"
        print(line)
        previous = voxels
    print(f"{'total':16s} {sum(r[1] for r in rows):7.3f} s")
    seconds, _ = timed(lambda: postprocess(prob, cfg, image), 1)
    print(f"{'postprocess()':16s} {seconds:7.3f} s (one call, all steps)")


if __name__ == "__main__":
    main()
