"""`cli.py compare` on real images: two tiny models trained briefly on HAM10000 (melanoma vs nevus), audited on the
same held-out images with configs/ham10000.yaml, then compared. Writes benchmarks/results/compare_ham.md.

    python benchmarks/compare_ham.py [--shared ../shared/data] [--n 200] [--work /tmp/compare_ham]

Data: ../shared/data/ham10000_224 (labels.csv, images/, masks/); one image per lesion_id, n/2 melanomas and n/2
nevi, 60% train / 40% test (stratified, seeded). Models: timm `test_resnet` (random init, no download) at 96 px;
the baseline trained 2 epochs, the candidate 8. CPU only, a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLASSES = ["mel", "nv"]


def manifest(shared: Path, n: int, work: Path, seed: int = 0) -> Path:
    ham = shared / "ham10000_224"
    df = pd.read_csv(ham / "labels.csv")
    df = df[df["dx"].isin(CLASSES)].drop_duplicates("lesion_id")
    parts = [g.sample(n // 2, random_state=seed) for _, g in df.groupby("dx")]
    df = pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    df["split"] = "test"
    for _, g in df.groupby("dx"):
        df.loc[g.index[: int(0.6 * len(g))], "split"] = "train"
    df["image"] = [str(ham / p) for p in df["image"]]
    df["mask"] = [str(ham / p) for p in df["mask"]]
    work.mkdir(parents=True, exist_ok=True)
    p = work / "manifest.csv"
    df[["image_id", "image", "mask", "lesion_id", "dx", "split"]].to_csv(p, index=False)
    return p


def train(man: Path, run_dir: Path, epochs: int, seed: int, size: int = 96) -> Path:
    import timm

    from audit.preprocess import InputSpec, image_to_grid, load_rgb, normalize
    torch.manual_seed(seed)
    df = pd.read_csv(man)
    tr = df[df["split"] == "train"]
    spec = InputSpec(size=size)
    X = np.stack([image_to_grid(load_rgb(p), spec) for p in tr["image"]])
    y = torch.tensor([CLASSES.index(c) for c in tr["dx"]])
    xt = normalize(X, spec)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=len(CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for b in range(0, len(y), 16):
            idx = perm[b:b + 16]
            xb = xt[idx]
            if torch.rand(1, generator=g).item() < 0.5:
                xb = torch.flip(xb, dims=[3])
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), run_dir / "checkpoint.pt")
    (run_dir / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name": "test_resnet", "source": "timm", "num_classes": 2}, "classes": CLASSES,
        "input": spec.to_dict(), "positive_class": "mel"}, sort_keys=False))
    return run_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(ROOT / ".." / "shared" / "data"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--work", default="/tmp/compare_ham")
    ap.add_argument("--md", default=str(ROOT / "benchmarks" / "results" / "compare_ham.md"))
    a = ap.parse_args()
    work = Path(a.work)
    t0 = time.perf_counter()
    man = manifest(Path(a.shared), a.n, work)
    runs = {"baseline": train(man, work / "tiny_2ep", 2, seed=0), "candidate": train(man, work / "tiny_8ep", 8, seed=1)}
    t_train = time.perf_counter() - t0
    out = work / "compare"
    cmd = [sys.executable, str(ROOT / "cli.py"), "compare", "--run-dir", str(runs["baseline"]), "--run-dir",
           str(runs["candidate"]), "--data", str(man), "--config", str(ROOT / "configs" / "ham10000.yaml"),
           "--counterfactual", "--workers", "0", "--out", str(out),
           "--gate", "max_sensitivity_drop=0.05", "--gate", "max_lift_increase=0.2"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    t_all = time.perf_counter() - t0
    md = ["# `cli.py compare` on HAM10000 (two tiny models, real images)", "",
          f"Written by `benchmarks/compare_ham.py` ({a.n} images of {a.n} lesions, half melanoma; 60% train, the "
          f"rest audited; baseline `test_resnet` 2 epochs, candidate 8 epochs, 96 px, CPU; "
          f"training {t_train:.0f} s, both audits and the compare {t_all - t_train:.0f} s). Exit code {r.returncode}.",
          "", "```", "$ " + " ".join(Path(c).name if c.startswith("/") else c for c in cmd[1:]),
          r.stdout.rstrip(), "```", ""]
    if r.returncode not in (0, 1):
        md += ["stderr:", "```", r.stderr[-3000:], "```"]
    Path(a.md).write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if r.returncode in (0, 1) else r.returncode


if __name__ == "__main__":
    sys.exit(main())
