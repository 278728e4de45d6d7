"""Speed of the multi-label audit, ratios measured side by side in one run.

    python benchmarks/multilabel_speed.py [--size 224] [--n 32] [--batch 16] [--device cpu|cuda]
                                          [--out benchmarks/results/multilabel_speed.md]

1. Maps: `audit.multilabel.multilabel_grad_cam` for all 14 findings of a 14-output sigmoid DenseNet-121
   (torchvision, random weights) at its last block (`features`) ÷ plain no-grad inference of the same model on the
   same batches (limit ≤ 1.5). Median of repeats, after a warm-up.
2. Whole audit: `run_audit` of the 14-finding run dir ÷ `run_audit` of the single-finding run dir (the same
   network audited as binary on output 0, model.binary_logit: 0), same synthetic images, regions (heuristic lungs,
   border, corners), bootstrap and options (limit ≤ 2).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

FINDINGS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
            "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax"]


def maps_ratio(size: int, n: int, batch: int, device: str, repeats: int) -> dict:
    from audit.fold import fold_batchnorm
    from audit.multilabel import multilabel_grad_cam
    torch.manual_seed(0)
    m = torchvision.models.densenet121(weights=None, num_classes=14).eval()
    fold_batchnorm(m, torch.zeros(1, 3, size, size), keep=["features"])  # as the audit runs it
    m.to(device).to(memory_format=torch.channels_last)
    xs = [torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
          for _ in range(max(1, n // batch))]

    def plain():
        with torch.no_grad():
            for x in xs:
                m(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def maps():
        for x in xs:
            r = multilabel_grad_cam(m, x, "features")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        assert r.head == "closed-form" and r.cams.shape[1] == 14

    plain(), maps()  # warm-up
    tps, tms = [], []
    for _ in range(repeats):  # interleaved: a shared machine's load changes both alike
        for fn, ts in ((plain, tps), (maps, tms)):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    tp, tm = statistics.median(tps), statistics.median(tms)
    return {"plain_s": tp, "maps_s": tm, "ratio": tm / tp}


def audit_ratio(size: int, n: int, batch: int, device: str) -> dict:
    from audit.config import resolve_config
    from audit.pipeline import run_audit
    from conftest import write_images
    tmp = Path(tempfile.mkdtemp(prefix="ml_speed_"))
    names = write_images(tmp / "data" / "images", n, size=(size, size))
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"image": [f"images/{x}" for x in names], "split": "test"})
    for f in FINDINGS:
        df[f] = rng.choice(["1", "0"], size=n, p=[0.3, 0.7])
    df["label"] = np.where(df[FINDINGS[0]] == "1", "pos", "neg")
    df.to_csv(tmp / "data" / "manifest.csv", index=False)
    torch.manual_seed(0)
    sd = torchvision.models.densenet121(weights=None, num_classes=14).state_dict()
    runs = {"multilabel": {"model": {"name": "densenet121", "task": "multilabel", "num_classes": 14},
                           "classes": FINDINGS},
            "single": {"model": {"name": "densenet121", "num_classes": 14, "binary_logit": 0},
                       "classes": ["neg", "pos"]}}
    (tmp / "preset.yaml").write_text(yaml.safe_dump({"regions": {"lungs": {"source": "heuristic"},
                                                                 "border": {"width": 0.08}, "corners": {"size": 0.12}},
                                                     "audit": {"n_boot": 200}}))
    out = {}
    for name, c in runs.items():
        rd = tmp / name
        rd.mkdir()
        torch.save(sd, rd / "checkpoint.pt")
        (rd / "config.yaml").write_text(yaml.safe_dump({**c, "input": {"size": size},
                                                        "data": {"manifest": "../data/manifest.csv"}}))
    for rep in range(2):  # the first round warms caches and imports; the second is reported
        for name in runs:
            cfg = resolve_config({"run_dir": str(tmp / name), "out": str(tmp / f"out_{name}_{rep}"), "workers": 0,
                                  "batch_size": batch, "device": device, "cache": False}, tmp / "preset.yaml")
            t = time.perf_counter()
            run_audit(cfg)
            out[name] = time.perf_counter() - t
    return {"multilabel_s": out["multilabel"], "single_s": out["single"], "ratio": out["multilabel"] / out["single"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "multilabel_speed.md"))
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    m = maps_ratio(a.size, a.n, a.batch, a.device, a.repeats)
    w = audit_ratio(a.size, a.n, a.batch, a.device)
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"{platform.processor() or 'cpu'}, " \
        f"{torch.get_num_threads()} threads"
    text = "\n".join([
        "# Multi-label speed (benchmarks/multilabel_speed.py)", "",
        f"14-output sigmoid DenseNet-121 (torchvision, random weights), {a.n} images at {a.size} px, batch {a.batch}, "
        f"{a.device} ({dev}); torch {torch.__version__}.", "",
        "| ratio | measured | limit | numerator | denominator |", "|---|---|---|---|---|",
        f"| 14 findings' maps at the last block ÷ plain inference | {m['ratio']:.2f} | ≤ 1.5 | {m['maps_s']:.3f} s "
        f"| {m['plain_s']:.3f} s |",
        f"| whole 14-finding audit ÷ single-finding audit | {w['ratio']:.2f} | ≤ 2 | {w['multilabel_s']:.2f} s | "
        f"{w['single_s']:.2f} s |", "",
        "Maps: one forward per batch; the head (ReLU → global average pool → linear) gives every finding's "
        "gradient in closed form, verified per batch by one backward through the head only. The whole audit adds, "
        "per finding, region scoring of its maps (pairs positive in truth or flagged), bootstrap CIs and operating "
        "points.", ""])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
