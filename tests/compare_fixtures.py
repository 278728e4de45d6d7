"""Hand-built audit folders for the compare tests: known per-image numbers, no model.

`audit_table(n_pos, n_neg, seed)` gives a per_image table (binary benign/melanoma, one target region `lesion`, one
artifact `ruler`); `write_audit(folder, table, ...)` writes what `cli.py audit` writes (per_image.csv,
summary.json, cams.npz, config.resolved.yaml) plus the images it points to, with validation-tuned operating
points whose thresholds are given as log-odds. The summary's other required keys are filled in with neutral values
(`summary_fixtures.complete`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from summary_fixtures import complete

CLASSES = ["benign", "melanoma"]
KINDS = {"lesion": "target", "ruler": "artifact"}


def audit_table(n_pos: int = 30, n_neg: int = 30, seed: int = 0) -> pd.DataFrame:
    """Positives score log-odds +2 (detected at threshold 0), negatives −2, a few in between; shares random."""
    rng = np.random.default_rng(seed)
    n = n_pos + n_neg
    label = np.array(["melanoma"] * n_pos + ["benign"] * n_neg)
    lo = np.where(label == "melanoma", 2.0, -2.0) + rng.normal(0, 0.3, n)
    p_mel = 1 / (1 + np.exp(-lo))
    pred = np.where(p_mel >= 0.5, "melanoma", "benign")
    frac_lesion = rng.uniform(0.4, 0.8, n)
    frac_ruler = rng.uniform(0.0, 0.1, n)
    return pd.DataFrame({
        "image_id": [f"im{i:03d}" for i in range(n)], "label": label, "split": "test", "pred": pred,
        "confidence": np.maximum(p_mel, 1 - p_mel), "correct": pred == label, "explained": pred, "cam_sum": 1.0,
        "p_benign": 1 - p_mel, "p_melanoma": p_mel, "logodds_benign": -lo, "logodds_melanoma": lo,
        "frac_lesion": frac_lesion, "area_lesion": 0.3, "lift_lesion": frac_lesion / 0.3,
        "frac_ruler": frac_ruler, "area_ruler": 0.05, "lift_ruler": frac_ruler / 0.05,
    })


def set_logodds(df: pd.DataFrame, rows, value: float) -> pd.DataFrame:
    """Give the rows (positional) the melanoma log-odds `value`, updating p_*, pred, confidence, correct."""
    df = df.copy()
    idx = df.index[list(rows)]
    df.loc[idx, "logodds_melanoma"] = value
    df.loc[idx, "logodds_benign"] = -value
    p = 1 / (1 + np.exp(-value))
    df.loc[idx, "p_melanoma"], df.loc[idx, "p_benign"] = p, 1 - p
    df.loc[idx, "pred"] = "melanoma" if p >= 0.5 else "benign"
    df.loc[idx, "confidence"] = max(p, 1 - p)
    df["correct"] = df["pred"] == df["label"]
    df["explained"] = df["pred"]
    return df


def write_audit(out: Path, df: pd.DataFrame, name: str = "run", thresholds=(0.0, 0.0), counterfactual=False,
                regions: dict | None = None, kinds: dict | None = None, summary_extra: dict | None = None) -> Path:
    """Write one audit folder; thresholds: the log-odds thresholds of the points tuned for 0.80 and 0.90."""
    out.mkdir(parents=True, exist_ok=True)
    img_dir = out.parent / "images"
    img_dir.mkdir(exist_ok=True)
    df = df.copy()
    paths = []
    for iid in df["image_id"]:
        p = img_dir / f"{iid}.png"
        if not p.exists():
            a = np.full((32, 32, 3), 120, np.uint8)
            a[8:24, 8:24] = (90, 60, 40)
            Image.fromarray(a).save(p)
        paths.append(str(p))
    df["image"] = paths
    df.to_csv(out / "per_image.csv", index=False)
    rng = np.random.default_rng(len(name))
    np.savez_compressed(out / "cams.npz", image_id=df["image_id"].to_numpy(dtype=str),
                        cam=rng.random((len(df), 4, 4)).astype(np.float32), layer=np.array("layer4"),
                        target=np.zeros(len(df), np.int64))
    y = (df["label"] == "melanoma").to_numpy()
    s = df["logodds_melanoma"].to_numpy()
    points = []
    for target, t in zip((0.8, 0.9), thresholds):
        pr = s >= t
        points.append({"target_sensitivity": target, "threshold": float(1 / (1 + np.exp(-t))),
                       "threshold_logodds": float(t), "fold_thresholds": None,
                       "tp": int((pr & y).sum()), "fn": int((~pr & y).sum()),
                       "tn": int((~pr & ~y).sum()), "fp": int((pr & ~y).sum())})
    summary = {"run": {"name": name, "model": "timm:test_resnet", "checkpoint_sha256": "ab" * 32,
                       "classes": CLASSES},
               "data": {"manifest": "manifest.csv", "split": "test", "n": len(df), "n_skipped": 0},
               "cam": {"layer": "layer4", "resolution": [4, 4]},
               "operating_points": {"tuning": "validation split", "points": points, "positive_class": "melanoma"},
               "verdict": "none"}
    if counterfactual:
        summary["counterfactual"] = {"regions": {r: {"n": len(df)} for r, k in (kinds or KINDS).items()
                                                 if k == "artifact"}}
    summary.update(summary_extra or {})
    (out / "summary.json").write_text(json.dumps(complete(summary)))
    cfg = {"options": {"seed": 0, "n_boot": 300, "min_n": 10, "high_conf": 0.9, "off_target_frac": 0.3,
                       "artifact_lift": 3.0, "positive": "melanoma", "regions": regions or {}},
           "run": {"classes": CLASSES, "input": {"size": 32}},
           "regions": kinds or KINDS}
    (out / "config.resolved.yaml").write_text(yaml.safe_dump(cfg))
    return out
