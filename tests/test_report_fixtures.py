"""A hand-built audit output folder for the report tests (4 images, 2 classes, known numbers; no model).

`build_out_dir(root)` writes what `cli.py audit` writes (per_image.csv, cams.npz, summary.json,
config.resolved.yaml) plus the images, mask files and manifest they point to. summary.json holds the known numbers
below; the other keys the schema requires are filled in with neutral values (`summary_fixtures.complete`). The manifest holds the `mask`
column (as in a real run, per_image.csv does not), so file-backed regions go through the report's manifest join.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from summary_fixtures import complete

S = 32          # model grid
H = 4           # CAM layer grid (8×8 input pixels per cell)
CLASSES = ["benign", "melanoma"]

# image_id, label, pred, confidence, p_melanoma, frac_lesion, frac_ruler, lift_ruler, flag_off_target, hot cell
ROWS = [
    ("img_a", "melanoma", "benign", 0.92, 0.08, 0.22, 0.50, 10.0, True, (0, 0)),
    ("img_b", "benign", "melanoma", 0.70, 0.70, 0.60, 0.05, 1.0, False, (1, 2)),
    ("img_c", "melanoma", "melanoma", 0.97, 0.97, 0.10, 0.02, 0.4, True, (3, 3)),
    ("img_d", "benign", "benign", 0.55, 0.45, float("nan"), 0.01, 0.2, False, (2, 1)),
]

REGIONS = {"lesion": {"source": "file", "values": [255]}, "ruler": {"source": "file", "values": [127]},
           "border": {"width": 0.1}}
KINDS = {"lesion": "target", "ruler": "artifact", "border": "artifact"}


def _image(i: int) -> np.ndarray:
    yy, xx = np.mgrid[0:48, 0:48]
    a = np.full((48, 48, 3), 150, np.uint8)
    a[..., 0] = 150 + (xx * 2).astype(np.uint8)            # a gradient, so that the picture is not flat
    disc = (yy - 24) ** 2 + (xx - 24) ** 2 <= 12 ** 2
    a[disc] = (90, 60, 40)                                  # a brown "lesion"
    return a


def _mask(lesion: bool) -> np.ndarray:
    yy, xx = np.mgrid[0:48, 0:48]
    m = np.zeros((48, 48), np.uint8)
    if lesion:
        m[(yy - 24) ** 2 + (xx - 24) ** 2 <= 12 ** 2] = 255
    m[40:44, 4:40] = 127                                    # a "ruler" strip
    return m


def build_out_dir(root: Path, extras: bool = True) -> Path:
    """Write the folder; returns the audit output folder (root/out). extras: add gates, verdict, operating points
    and counterfactual results to summary.json (as a later pipeline step does)."""
    data, out = root / "data", root / "out"
    (data / "images").mkdir(parents=True, exist_ok=True)
    (data / "masks").mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    man, recs, cams = [], [], []
    for i, (iid, label, pred, conf, p_mel, f_les, f_rul, l_rul, off, hot) in enumerate(ROWS):
        img_p, mask_p = data / "images" / f"{iid}.png", data / "masks" / f"{iid}.png"
        Image.fromarray(_image(i)).save(img_p)
        Image.fromarray(_mask(lesion=not np.isnan(f_les))).save(mask_p)
        man.append({"image_id": iid, "image": f"images/{iid}.png", "mask": f"masks/{iid}.png", "label": label,
                    "split": "test"})
        rec = {"image_id": iid, "image": str(img_p), "label": label, "split": "test", "pred": pred,
               "confidence": conf, "correct": label == pred, "explained": pred, "cam_sum": 1.0,
               "p_benign": round(1 - p_mel, 6), "p_melanoma": p_mel}
        for r, f, lift, area in (("lesion", f_les, f_les / 0.2 if f_les == f_les else np.nan, 0.2),
                                 ("ruler", f_rul, l_rul, 0.05), ("border", 0.3, 0.8, 0.36)):
            rec.update({f"frac_{r}": f, f"area_{r}": area if f == f else np.nan, f"lift_{r}": lift,
                        f"hit_{r}": 0.0 if f == f else np.nan, f"fraclayer_{r}": f})
        rec["frac_outside_lesion"] = 1 - f_les
        rec["flag_high_conf_error"] = (label != pred) and conf >= 0.9
        rec["flag_off_target"] = off
        recs.append(rec)
        cam = np.zeros((H, H), np.float32)
        cam[hot] = 1.0
        cams.append(cam)
    pd.DataFrame(man).to_csv(data / "manifest.csv", index=False)
    pd.DataFrame(recs).to_csv(out / "per_image.csv", index=False)
    np.savez_compressed(out / "cams.npz", image_id=np.array([r[0] for r in ROWS], dtype=str),
                        cam=np.stack(cams), layer=np.array("layer4"), target=np.zeros(len(ROWS), np.int64))
    est = lambda v, lo, hi, n: {"value": v, "lo": lo, "hi": hi, "n": n, "too_small": False, "p": None, "note": ""}
    small = {"value": None, "lo": None, "hi": None, "n": 2, "too_small": True, "p": None, "note": "n < 10"}
    summary = {
        "run": {"name": "tiny_<run>", "model": "timm:test_resnet", "checkpoint": "ckpt.pt",
                "checkpoint_sha256": "ab" * 32, "classes": CLASSES},
        "data": {"manifest": str(data / "manifest.csv"), "split": "test", "n": 4, "n_skipped": 0},
        "cam": {"method": "Grad-CAM (Selvaraju et al. 2017)", "layer": "layer4", "resolution": [H, H],
                "target": "pred"},
        "accuracy": est(0.5, 0.15, 0.85, 4),
        "per_class": {c: {"n": 2, "recall": est(0.5, 0.09, 0.91, 2), "too_small": True} for c in CLASSES},
        "regions": {r: {"kind": k, "n_present": 4 if r != "lesion" else 3, "n_missing": 0 if r != "lesion" else 1,
                        "median_area": 0.2, "median_lift": 1.5 if r != "ruler" else 5.0,
                        "median_frac_layer_res": 0.2, "pointing_game": est(0.25, 0.05, 0.7, 4),
                        "stats": {"median_all": est(0.22, 0.1, 0.6, 4), "diff_median": small,
                                  "spearman_conf_all": est(-0.2, -0.9, 0.8, 4), "auroc_error": small}}
                    for r, k in KINDS.items()},
        "high_conf_errors": {"threshold": 0.9, "rate": est(0.25, 0.05, 0.7, 4), "top": []},
        "calibration": {"ece": est(0.12, 0.05, 0.3, 4), "ece_if_calibrated": 0.0915, "n_bins": 10,
                        "method": "10 equal-width bins"},
        "off_target": {"rate": est(0.5, 0.15, 0.85, 4), "n_undefined": 0,
                       "rule": "target frac < 0.5 or artifact lift > 3.0", "artifact_lift": 3.0, "target_frac": 0.5},
    }
    if extras:
        summary["gates"] = [
            {"name": "min_median_target_frac", "value": 0.22, "ci": [0.1, 0.6], "threshold": 0.5, "passed": False,
             "status": "fail"},
            {"name": "max_high_conf_error_rate", "value": 0.02, "ci": [0.0, 0.1], "threshold": 0.05, "passed": True,
             "status": "pass"},
            {"name": "max_artifact_lift <script>", "value": None, "ci": None, "threshold": 2.0, "passed": None,
             "status": "undefined", "n": None, "note": "not measured"}]
        summary["verdict"] = "fail"
        summary["operating_points"] = {
            "tuning": "validation split", "warning": None, "n": 4, "n_pos": 2, "n_neg": 2,
            "points": [{"target_sensitivity": 0.9, "threshold": 0.5, "fold_thresholds": None,
                        "tp": 1, "fn": 1, "tn": 1, "fp": 1, "sensitivity": est(0.5, 0.09, 0.91, 2),
                        "specificity": est(0.5, 0.09, 0.91, 2), "ppv": est(0.5, 0.09, 0.91, 2),
                        "npv": est(0.5, 0.09, 0.91, 2)}],
            "top1": {"tp": 1, "fn": 1, "tn": 1, "fp": 1, "sensitivity": est(0.5, 0.09, 0.91, 2),
                     "specificity": est(0.5, 0.09, 0.91, 2), "ppv": est(0.5, 0.09, 0.91, 2),
                     "npv": est(0.5, 0.09, 0.91, 2)}}
        summary["counterfactual"] = {
            "method": "region filled with the median of a ring around it", "min_n": 1,
            "regions": {"ruler": {"n": 4, "too_small": False, "n_flips": 1, "flip_rate": est(0.25, 0.05, 0.7, 4),
                                  "mean_delta": est(-0.1, -0.3, 0.05, 4)},
                        "border": {"n": 2, "too_small": True, "flip_rate": small, "mean_delta": small}},
            "cost": {"n_edited": 6, "n_forward": None, "seconds": None}}
    (out / "summary.json").write_text(json.dumps(complete(summary), indent=2))
    config = {"auditor_version": "0.1.0",
              "options": {"target": "pred", "seed": 0, "high_conf": 0.9, "off_target_frac": 0.5,
                          "artifact_lift": 3.0, "positive": None, "regions": REGIONS, "data_spec": {}},
              "run": {"classes": CLASSES, "positive_class": "melanoma",
                      "input": {"size": S, "mean": [0.5] * 3, "std": [0.25] * 3, "resize": "stretch",
                                "crop_pct": 1.0, "channels": 3},
                      "manifest": str(data / "manifest.csv")},
              "layer": "layer4", "cam_resolution": [H, H], "split": "test", "manifest": str(data / "manifest.csv"),
              "regions": KINDS}
    (out / "config.resolved.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out
