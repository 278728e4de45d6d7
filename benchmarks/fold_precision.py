"""How far float32 Grad-CAM maps are from the exact (float64) map, with and without BatchNorm folding, and how far
`--amp bf16|fp16` maps are from float32, on trained runs.

    python benchmarks/fold_precision.py RUN_DIR [RUN_DIR ...] [--n 32] [--out benchmarks/results/fold_precision.md]

For each run (a training run directory, e.g. the validation runs of docs/validation.md) and each of its last two
ResNet stages (or the default layer): Grad-CAM of n seeded random HAM10000 images (../shared/data/ham10000_224) is
computed in float64 on the model as loaded (the reference) and in float32 on the model as loaded and on the
BatchNorm-folded copy the audit runs (audit/fold.py). Maps are compared as pytorch-grad-cam shows them: ReLU,
min-max, bilinear resize to the input, min-max; the table gives the largest absolute difference over all pixels.
benchmarks/speed.py makes the same comparison on random-weight models at 224 px.

AMP: the folded model under autocast (bf16, fp16), as the audit runs it with `--amp`, against float32 on the same
folded model: the largest difference of the display maps, and of the share of Grad-CAM mass inside the
official lesion mask (the audit's `frac_lesion`, from audit/scores.py), over the n images.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("AUDIT_SHARED_DATA", ROOT / ".." / "shared" / "data"))


def main() -> int:
    from audit.cam import default_layer, get_module, grad_cam, minmax, upsample
    from audit.fold import fold_batchnorm
    from audit.preprocess import image_to_grid, load_rgb, mask_to_grid, normalize
    from audit.run import load_run
    from audit.scores import score_batch

    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fold_precision.md"))
    args = ap.parse_args()
    if not (DATA / "ham10000_224").is_dir():
        print(f"skipping: {DATA / 'ham10000_224'} not found")
        return 0
    lab = pd.read_csv(DATA / "ham10000_224" / "labels.csv").sample(args.n, random_state=0)
    lines = ["# Float32 Grad-CAM vs float64, with and without BatchNorm folding (benchmarks/fold_precision.py)", "",
             f"Command: `python benchmarks/fold_precision.py {' '.join(args.runs)}`. n = {args.n} HAM10000 images "
             "(seed 0).", "", "| run | input px | layer | BatchNorm folded | max |Δ| as loaded vs float64 | "
             "max |Δ| folded vs float64 | max |Δ| folded vs as loaded | AMP bf16 vs float32: max |Δ| map / "
             "lesion fraction | AMP fp16 vs float32: max |Δ| map / lesion fraction |",
             "|---|---|---|---|---|---|---|---|---|"]
    for rd in args.runs:
        model, run = load_run(rd)
        model.eval()
        s = run.input.size
        x = normalize(np.stack([image_to_grid(load_rgb(DATA / "ham10000_224" / p), run.input)
                                for p in lab["image"]]), run.input)
        masks = [{"lesion": torch.from_numpy(mask_to_grid(np.asarray(load_rgb(DATA / "ham10000_224" / p))[..., 0] > 127,
                                                          run.input))} for p in lab["mask"]]
        layers = [n for n in ("layer4", "layer3") if n in dict(model.named_modules())] or \
            [default_layer(model, (1, run.input.channels, s, s))]
        for layer in layers:
            get_module(model, layer)
            folded = copy.deepcopy(model)
            rep = fold_batchnorm(folded, x[:1], keep=[layer])
            exact = grad_cam(copy.deepcopy(model).double(), x.double(), layer)

            def vis(c):
                return minmax(upsample(minmax(c.float()), s))
            v64 = vis(exact.cams)
            v32 = vis(grad_cam(model, x, layer, exact.target).cams)
            vf = vis(grad_cam(folded, x, layer, exact.target).cams)
            f32 = grad_cam(folded, x, layer, exact.target)
            frac32 = score_batch(f32.cams, masks, {"lesion": "target"}, s)["frac_lesion"]
            amp_cells = []
            for dt in (torch.bfloat16, torch.float16):
                low = grad_cam(folded, x, layer, exact.target, amp=dt)
                frac = score_batch(low.cams, masks, {"lesion": "target"}, s)["frac_lesion"]
                amp_cells.append(f"{float((vis(low.cams) - vf).abs().max()):.1e} / "
                                 f"{float(np.nanmax(np.abs(frac - frac32))):.1e}")
            lines.append(f"| {Path(rd).name} | {s} | {layer} | {rep.n_folded} of {rep.n_norm} | "
                         f"{float((v32 - v64).abs().max()):.1e} | {float((vf - v64).abs().max()):.1e} | "
                         f"{float((vf - v32).abs().max()):.1e} | {amp_cells[0]} | {amp_cells[1]} |")
            print(lines[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
