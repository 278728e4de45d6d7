"""The embedded demo: a synthetic chest-radiograph-like dataset with a planted marker shortcut, two tiny CNNs.

Images (S×S grayscale as RGB): a bright body, two dark lung fields (known masks), noise. Class `opacity` has a
faint bright blob inside one lung; class `clear` has none. A burned-in "R"-like marker sits in the top-left
corner of some images. In the *shortcut* training split the marker marks every `opacity` image and no `clear`
one; in the *clean* training split it is on half of each class; in the val/test splits it is independent of the
label (half of each class). The target mask file uses the V7 convention: 255 = lung, 127 = the marker.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

CLASSES = ["clear", "opacity"]
MODEL = {"name": "test_resnet", "source": "timm"}


@dataclass
class DemoSize:
    size: int = 128
    n_train: int = 480
    n_val: int = 96
    n_test: int = 160
    epochs: int = 5
    batch_size: int = 32


def _lungs(s: int) -> np.ndarray:
    yy, xx = np.mgrid[0:s, 0:s] / s
    left = ((xx - 0.33) / 0.14) ** 2 + ((yy - 0.52) / 0.30) ** 2 <= 1
    right = ((xx - 0.67) / 0.14) ** 2 + ((yy - 0.52) / 0.30) ** 2 <= 1
    return left | right


def _marker(s: int) -> np.ndarray:
    """A block letter 'R' about 14% of the side, in the top-left corner (bool S×S)."""
    m = np.zeros((s, s), bool)
    u = max(1, s // 64)  # stroke width
    h, w = 9 * u, 6 * u
    t, l = 3 * u, 3 * u
    m[t:t + h, l:l + u] = True                      # stem
    m[t:t + u, l:l + w - u] = True                  # top bar
    m[t + 4 * u:t + 5 * u, l:l + w - u] = True      # middle bar
    m[t:t + 5 * u, l + w - u:l + w] = True          # bowl side
    for k in range(4 * u):                          # leg
        m[t + 5 * u + k, l + u + (k * (w - u)) // (4 * u):l + 2 * u + (k * (w - u)) // (4 * u)] = True
    return m


def make_image(rng: np.random.Generator, s: int, opacity: bool, marker: bool) -> tuple[np.ndarray, np.ndarray]:
    """uint8 S×S×3 image and uint8 S×S mask (255 lung, 127 marker)."""
    yy, xx = np.mgrid[0:s, 0:s] / s
    body = 0.55 + 0.15 * np.exp(-((xx - 0.5) ** 2) / 0.08)
    lungs = _lungs(s)
    img = body.copy()
    img[lungs] -= 0.30
    if opacity:
        side = rng.choice([0.33, 0.67])
        cy, cx = rng.uniform(0.35, 0.7), side + rng.uniform(-0.05, 0.05)
        r = rng.uniform(0.06, 0.1)
        blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
        img += 0.22 * blob * lungs
    img += rng.normal(0, 0.06, (s, s))
    mask = np.where(lungs, 255, 0).astype(np.uint8)
    if marker:
        mk = _marker(s)
        img[mk] = 0.98
        mask[mk] = 127
    img = np.clip(img, 0, 1)
    g = (img * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2), mask


def generate(root: Path, size: DemoSize, seed: int = 0) -> dict[str, Path]:
    """Write images, masks and two manifests (shortcut.csv, clean.csv) under root; returns the manifest paths."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows = {"shortcut": [], "clean": []}
    s = size.size

    def write(name, img, mask):
        Image.fromarray(img).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")

    for split, n in (("train", size.n_train), ("val", size.n_val), ("test", size.n_test)):
        for i in range(n):
            y = i % 2
            if split == "train":
                variants = {"shortcut": bool(y), "clean": bool(rng.random() < 0.5)}
            else:
                m = bool(rng.random() < 0.5)
                variants = {"shortcut": m, "clean": m}
            state = rng.bit_generator.state
            for v, marker in variants.items():
                name = f"{split}_{i:04d}" + (f"_{v}" if split == "train" else "")
                if split == "train" or v == "shortcut":  # val/test images are shared by both manifests
                    rng.bit_generator.state = state  # the same anatomy in both variants; only the marker differs
                    write(name, *make_image(rng, s, bool(y), marker))
                rows[v].append({"image_id": name, "image": f"images/{name}.png", "mask": f"masks/{name}.png",
                                "label": CLASSES[y], "split": split, "marker": int(marker)})
    out = {}
    for v, r in rows.items():
        p = root / f"{v}.csv"
        pd.DataFrame(r).to_csv(p, index=False)
        out[v] = p
    return out


def train(manifest: Path, run_dir: Path, size: DemoSize, seed: int = 0, log=print) -> Path:
    """Train MODEL on the manifest's train split (CPU) and write a run directory in the contract's format."""
    import timm

    from .preprocess import InputSpec, load_rgb, normalize
    torch.manual_seed(seed)
    df = pd.read_csv(manifest)
    tr = df[df["split"] == "train"]
    spec = InputSpec(size=size.size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    X = np.stack([load_rgb(manifest.parent / p) for p in tr["image"]])
    y = torch.tensor([CLASSES.index(c) for c in tr["label"]])
    xt = normalize(X, spec)
    model = timm.create_model(MODEL["name"], pretrained=False, num_classes=len(CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = size.epochs * math.ceil(len(tr) / size.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.perf_counter()
    for ep in range(size.epochs):
        perm = torch.randperm(len(y), generator=g)
        tot, acc = 0.0, 0
        for b in range(0, len(y), size.batch_size):
            idx = perm[b:b + size.batch_size]
            xb = xt[idx]
            if torch.rand(1, generator=g).item() < 0.5:
                xb = xb + 0.02 * torch.randn(xb.shape, generator=g)
            out = model(xb)
            loss = torch.nn.functional.cross_entropy(out, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
            acc += int((out.argmax(1) == y[idx]).sum())
        log(f"  {run_dir.name}: epoch {ep + 1}/{size.epochs} loss {tot / len(y):.3f} "
            f"train acc {acc / len(y):.2f} ({time.perf_counter() - t0:.0f}s)")
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), run_dir / "checkpoint.pt")
    cfg = {"model": {**MODEL, "num_classes": len(CLASSES)}, "classes": CLASSES,
           "input": spec.to_dict(), "positive_class": "opacity",
           "data": {"manifest": str(Path("..") / "data" / manifest.name)}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return run_dir


DEMO_PRESET = {
    "regions": {
        "lungs": {"source": "file", "values": [255]},
        "text": {"source": "file", "values": [127]},
        "border": {"width": 0.08},
    },
    "gates": {"min_median_target_frac": 0.5, "max_artifact_lift": 2.0, "max_high_conf_error_rate": 0.05,
              "max_counterfactual_flip_rate": 0.10},
}


#: non-inferiority gates of the demo's closing `compare` (docs/compare.md): the clean model must not lean on the
#: marker more, nor lose accuracy, than the shortcut model it replaces
DEMO_COMPARE_GATES = {"max_accuracy_drop": 0.02, "max_lift_increase[text]": 0.2, "max_flip_rate_increase[text]": 0.05}


def prepare(root: Path, size: DemoSize | None = None, seed: int = 0, log=print) -> dict[str, Path]:
    """Generate the data, train both models; returns {variant: run_dir}. Reuses finished runs."""
    size = size or DemoSize()
    data = root / "data"
    manifests = {v: data / f"{v}.csv" for v in ("shortcut", "clean")}
    stamp = data / "size.yaml"
    want = yaml.safe_dump(size.__dict__ | {"seed": seed})
    if not all(p.exists() for p in manifests.values()) or not stamp.exists() or stamp.read_text() != want:
        log(f"generating synthetic radiographs under {data} ...")
        manifests = generate(data, size, seed)
        stamp.write_text(want)
        for v in manifests:
            ck = root / f"run_{v}" / "checkpoint.pt"
            if ck.exists():
                ck.unlink()
    (root / "demo_preset.yaml").write_text(yaml.safe_dump(DEMO_PRESET, sort_keys=False))
    runs = {}
    for v, m in manifests.items():
        rd = root / f"run_{v}"
        if not (rd / "checkpoint.pt").exists():
            log(f"training the {v} model ({MODEL['source']}:{MODEL['name']}, {size.epochs} epochs, CPU) ...")
            train(m, rd, size, seed, log)
        runs[v] = rd
    return runs
