"""Train a classifier from scratch on CPU for the real-data validation and write a run directory.

    python benchmarks/validation/train.py --dataset ham --variant shortcut --arch resnet18
    python benchmarks/validation/train.py --dataset cxr --variant clean --arch resnet18 --epochs 20

Run directory (docs/run_dir.md): config.yaml, checkpoint.pt (plain state_dict, last epoch), plus
train_state.pt (resume: model, optimiser, scheduler, epoch; a rerun resumes from it), train_log.json (per
epoch loss, wall and CPU seconds, recipe) and verify.json (the planted-artifact check, see `verify`).

Recipe: torchvision resnet18 or timm efficientnet_b0, random init, 2 classes; input S×S (default 96) with
ImageNet mean/std (the images are decoded and resized once, `valdata.load_cache`); AdamW (weight decay 1e-4),
one-cycle learning rate (max 2e-3), batch 32 (cxr 16), 4 epochs (cxr 12), class-weighted cross-entropy (weights N / (2 n_c) over
the images of each epoch), random horizontal + vertical flips (ham) or horizontal flips (cxr). ham: each
epoch uses every training melanoma and a fresh random draw of 2 nevi per melanoma (CPU budget; the weights
correct the remaining 1:2 imbalance). cxr: every training image each epoch.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

import valdata as vd

NV_PER_MEL = 2


def build_model(arch: str, n_classes: int) -> tuple[torch.nn.Module, dict]:
    if arch == "resnet18":
        import torchvision
        return torchvision.models.resnet18(weights=None, num_classes=n_classes), \
            {"name": "resnet18", "source": "torchvision", "num_classes": n_classes}
    if arch == "efficientnet_b0":
        import timm
        return timm.create_model("efficientnet_b0", pretrained=False, num_classes=n_classes), \
            {"name": "efficientnet_b0", "source": "timm", "num_classes": n_classes}
    raise SystemExit(f"--arch: expected resnet18 or efficientnet_b0, got {arch!r}")


def to_input(x_uint8: torch.Tensor, spec) -> torch.Tensor:
    from audit.preprocess import normalize
    return normalize(x_uint8, spec)


def epoch_indices(labels: np.ndarray, dataset: str, positive: str, seed: int, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([seed, epoch])
    if dataset != "ham":
        return rng.permutation(len(labels))
    pos = np.flatnonzero(labels == positive)
    neg = np.flatnonzero(labels != positive)
    neg = rng.choice(neg, size=min(len(neg), NV_PER_MEL * len(pos)), replace=False)
    return rng.permutation(np.concatenate([pos, neg]))


@torch.no_grad()
def predict(model: torch.nn.Module, x: np.ndarray, spec, bs: int = 128) -> np.ndarray:
    model.eval()
    out = []
    for b in range(0, len(x), bs):
        out.append(torch.softmax(model(to_input(torch.from_numpy(x[b:b + bs]), spec)), 1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 2))


def auc(y: np.ndarray, s: np.ndarray) -> float:
    from scipy.stats import rankdata
    y = np.asarray(y, bool)
    if y.all() or not y.any():
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (~y).sum()))


def verify(model, man: pd.DataFrame, ids, imgs, kind: str, spec, classes, positive: str, targets=None) -> dict:
    """The planted artifact, measured directly (not through the audit): every test image is run twice, as its
    original pixels and with the artifact planted (same function, same corner rule), and P(positive) and the
    predicted class are compared. Reported over all test images, per class, and separately for the test images
    that carry the artifact in the audited manifest (their 'without' twin is the untouched original)."""
    from valdata import pick_corner, plant
    te = man[man["split"] == "test"].reset_index(drop=True)
    pos_k = classes.index(positive)
    idx = {iid: k for k, iid in enumerate(ids)}
    orig = np.stack([imgs[idx[i]] for i in te["image_id"].astype(str)])
    rng = np.random.default_rng(123)
    planted = []
    for j, row in te.iterrows():
        c = row["artifact_corner"] if isinstance(row["artifact_corner"], str) and row["artifact_corner"] else \
            ("tr" if kind == "white_marker" else
             pick_corner(None if targets is None else targets[idx[str(row["image_id"])]], orig.shape[1], rng))
        planted.append(plant(orig[j], kind, c)[0])
    planted = np.stack(planted)
    p0 = predict(model, orig, spec)
    p1 = predict(model, planted, spec)
    y = (te["label"] == positive).to_numpy()

    def block(sel):
        n = int(sel.sum())
        if n == 0:
            return {"n": 0}
        a, b = p0[sel], p1[sel]
        pa, pb = a.argmax(1) == pos_k, b.argmax(1) == pos_k
        return {"n": n, "p_pred_pos_without": float(pa.mean()), "p_pred_pos_with": float(pb.mean()),
                "mean_p_pos_without": float(a[:, pos_k].mean()), "mean_p_pos_with": float(b[:, pos_k].mean()),
                "flip_rate": float((a.argmax(1) != b.argmax(1)).mean()), "n_flips": int((a.argmax(1) != b.argmax(1)).sum())}

    art = (te["artifact"].astype(int) == 1).to_numpy()
    return {"positive": positive, "kind": kind,
            "all_test": block(np.ones(len(te), bool)),
            "by_class": {c: block((te["label"] == c).to_numpy()) for c in classes},
            "artifact_bearing_test": block(art),
            "auc_original": auc(y, p0[:, pos_k]), "auc_all_planted": auc(y, p1[:, pos_k]),
            "auc_as_audited": auc(y, np.where(art[:, None], p1, p0)[:, pos_k])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="train one validation model (CPU) and write its run directory")
    ap.add_argument("--dataset", choices=sorted(vd.DATASETS), required=True)
    ap.add_argument("--variant", choices=["clean", "shortcut"], required=True)
    ap.add_argument("--arch", choices=["resnet18", "efficientnet_b0"], default="resnet18")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=None, help="default: ham 4, cxr 12")
    ap.add_argument("--batch-size", type=int, default=None, help="default: ham 32, cxr 16")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=vd.WORK)
    ap.add_argument("--out", type=Path, default=None, help="default: WORK/runs/<dataset>_<arch>_<variant>")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    epochs = a.epochs or (4 if a.dataset == "ham" else 12)
    bs = a.batch_size or (32 if a.dataset == "ham" else 16)
    out = a.out or a.work / "runs" / f"{a.dataset}_{a.arch}_{a.variant}"
    out.mkdir(parents=True, exist_ok=True)
    log_f = open(out / "train.log", "a")

    def log(msg):
        print(msg, flush=True)
        log_f.write(msg + "\n")
        log_f.flush()

    prep = vd.prepare(a.dataset, a.size, a.work, log=log)
    classes, positive, kind = prep["classes"], prep["positive"], prep["plant"]
    spec = vd.spec_for(a.size)
    man = pd.read_csv(prep[a.variant], dtype={"artifact_corner": str}, keep_default_na=False)
    z = np.load(prep["cache"])
    ids, imgs = z["image_id"].astype(str), z["img"]
    tr = man[man["split"] == "train"].reset_index(drop=True)
    x_tr = vd.grid_images(tr, ids, imgs, kind)
    y_tr = np.array([classes.index(c) for c in tr["label"]])
    lab_tr = tr["label"].to_numpy()

    torch.manual_seed(a.seed)
    model, model_cfg = build_model(a.arch, len(classes))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    steps_per = math.ceil(len(epoch_indices(lab_tr, a.dataset, positive, a.seed, 0)) / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=epochs * steps_per)
    cfg = {"model": model_cfg, "classes": classes, "input": spec.to_dict(), "positive_class": positive,
           "data": {"manifest": str(Path(prep[a.variant]).resolve())}}
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    recipe = {"dataset": a.dataset, "variant": a.variant, "arch": a.arch, "size": a.size, "epochs": epochs,
              "batch_size": bs, "lr": a.lr, "seed": a.seed, "threads": a.threads, "optimizer": "AdamW wd 1e-4",
              "schedule": "OneCycle", "loss": "class-weighted cross-entropy (N / (2 n_c) per epoch)",
              "augment": "hflip+vflip" if a.dataset == "ham" else "hflip",
              "nv_per_mel": NV_PER_MEL if a.dataset == "ham" else None, "n_train_rows": len(tr),
              "n_train_per_epoch": steps_per and len(epoch_indices(lab_tr, a.dataset, positive, a.seed, 0)),
              "planted_train": int(tr["artifact"].astype(int).sum()), "manifest": str(prep[a.variant])}
    state_p, log_p = out / "train_state.pt", out / "train_log.json"
    history, start = [], 0
    if state_p.exists():
        st = torch.load(state_p, weights_only=True)  # plain tensors, numbers and lists: no code runs
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        start, history = st["epoch"], st["history"]
        log(f"resuming {out.name} after epoch {start}")
    g = torch.Generator().manual_seed(a.seed)
    for ep in range(start, epochs):
        g.manual_seed(a.seed * 1000 + ep)
        idx = epoch_indices(lab_tr, a.dataset, positive, a.seed, ep)
        cnt = np.bincount(y_tr[idx], minlength=len(classes)).astype(np.float64)
        w = torch.tensor(len(idx) / (len(classes) * np.maximum(cnt, 1)), dtype=torch.float32)
        model.train()
        t0, c0 = time.perf_counter(), time.process_time()
        tot, acc = 0.0, 0
        for b in range(0, len(idx), bs):
            j = idx[b:b + bs]
            xb = torch.from_numpy(x_tr[j])
            if torch.rand(1, generator=g).item() < 0.5:
                xb = xb.flip(2)  # N×H×W×3: W is axis 2
            if a.dataset == "ham" and torch.rand(1, generator=g).item() < 0.5:
                xb = xb.flip(1)
            yb = torch.from_numpy(y_tr[j])
            logits = model(to_input(xb, spec))
            loss = torch.nn.functional.cross_entropy(logits, yb, weight=w)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(j)
            acc += int((logits.argmax(1) == yb).sum())
        h = {"epoch": ep + 1, "loss": tot / len(idx), "train_acc": acc / len(idx), "n": int(len(idx)),
             "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
        history.append(h)
        torch.save(model.state_dict(), out / "checkpoint.pt")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "epoch": ep + 1, "history": history}, state_p)
        log(f"{out.name}: epoch {ep + 1}/{epochs} loss {h['loss']:.3f} train acc {h['train_acc']:.3f} "
            f"({h['wall_s']:.0f}s wall, {h['cpu_s']:.0f}s CPU)")
    # validation AUC and the planted-artifact check
    va = man[man["split"] == "val"].reset_index(drop=True)
    pv = predict(model, vd.grid_images(va, ids, imgs, kind), spec)
    val_auc = auc((va["label"] == positive).to_numpy(), pv[:, classes.index(positive)])
    ver = verify(model, man, ids, imgs, kind, spec, classes, positive, z["target"])
    (out / "verify.json").write_text(json.dumps(ver, indent=2))
    info = {"recipe": recipe, "history": history, "val_auc": val_auc,
            "train_wall_s": sum(h["wall_s"] for h in history), "train_cpu_s": sum(h["cpu_s"] for h in history)}
    log_p.write_text(json.dumps(info, indent=2))
    log(f"{out.name}: done; val AUC {val_auc:.3f}; train {info['train_wall_s'] / 60:.1f} min wall, "
        f"{info['train_cpu_s'] / 60:.1f} min CPU; artifact-bearing test flip rate "
        f"{ver['artifact_bearing_test'].get('flip_rate')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
