"""Real-data validation helpers (benchmarks/validation): splits, the planted artifact, and the audit's response.

Tests that need the real images skip when /work/shared/data (or $AUDIT_SHARED_DATA) is absent. No test trains
a real model: the audit check uses a tiny hand-built network whose logit depends on the planted artifact.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
VAL = REPO / "benchmarks" / "validation"
sys.path.insert(0, str(VAL))
import valdata as vd  # noqa: E402

SHARED = Path(os.environ.get("AUDIT_SHARED_DATA", REPO / ".." / "shared" / "data")).resolve()
HAM = SHARED / "ham10000_224"
CXR = SHARED / "cxr_covid_v7"


def need(folder: Path):
    if not (folder / "labels.csv").exists():
        pytest.skip(f"real data not available: {folder} (set AUDIT_SHARED_DATA to the shared data folder)")


# ------------------------------------------------------------------------------------------------- splits

def test_group_split_synthetic_groups_never_straddle():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(200), rng.integers(1, 4, 200))
    labels = np.where(groups % 5 == 0, "pos", "neg")
    s = vd.group_split(labels, groups, (0.7, 0.15, 0.15), seed=1)
    df = pd.DataFrame({"g": groups, "s": s, "y": labels})
    assert (df.groupby("g")["s"].nunique() == 1).all()
    for split in ("train", "val", "test"):
        assert set(df.loc[df["s"] == split, "y"]) == {"pos", "neg"}
    assert np.array_equal(s, vd.group_split(labels, groups, (0.7, 0.15, 0.15), seed=1))  # deterministic


def test_ham_split_by_lesion_id_has_no_leakage():
    need(HAM)
    df = vd.task_table("ham", SHARED)
    assert set(df["label"]) == {"mel", "nv"}
    s = vd.group_split(df["label"], df["group"], vd.DATASETS["ham"]["fractions"])
    per_lesion = pd.Series(s).groupby(df["lesion_id"].to_numpy()).nunique()
    assert (per_lesion == 1).all()
    frac = pd.Series(s).value_counts(normalize=True)
    assert abs(frac["train"] - 0.70) < 0.02 and abs(frac["test"] - 0.15) < 0.02
    for split in ("train", "val", "test"):  # stratified: each split keeps the melanoma share
        mel = (df["label"].to_numpy()[s == split] == "mel").mean()
        assert abs(mel - (df["label"] == "mel").mean()) < 0.02


def test_cxr_split_by_patient_has_no_leakage():
    need(CXR)
    df = vd.task_table("cxr", SHARED)
    assert set(df["label"]) == {"AP", "PA"} and len(df) == 155
    s = vd.group_split(df["label"], df["group"], vd.DATASETS["cxr"]["fractions"])
    assert (pd.Series(s).groupby(df["patientid"].to_numpy()).nunique() == 1).all()
    for split in ("train", "val", "test"):
        assert set(df["label"].to_numpy()[s == split]) == {"AP", "PA"}


# ------------------------------------------------------------------------------------------------ planting

@pytest.mark.parametrize("kind", ["green_square", "white_marker"])
@pytest.mark.parametrize("corner", ["tl", "tr", "bl", "br"])
def test_plant_changes_exactly_its_mask(kind, corner):
    rng = np.random.default_rng(0)
    img = rng.integers(1, 254, (96, 96, 3), dtype=np.uint8)
    before = img.copy()
    out, m = vd.plant(img, kind, corner)
    t, l, a = vd.square_box(96, corner, 0.20, 0.04 if kind == "green_square" else 0.03)
    expect = np.zeros((96, 96), bool)
    expect[t:t + a, l:l + a] = True
    assert np.array_equal(m, expect)
    assert np.array_equal(out[~m], img[~m])               # nothing outside the mask changes
    assert (out[m] != img[m]).any(axis=-1).all()           # every mask pixel is painted
    if kind == "green_square":
        assert (out[m] == (0, 200, 0)).all()
    assert np.array_equal(img, before)                     # the input is not modified


def test_pick_corner_avoids_the_lesion():
    les = np.zeros((96, 96), bool)
    les[:50, :50] = True   # lesion reaching into the top-left
    les[60:, 60:] = True   # … and the bottom-right
    picks = {vd.pick_corner(les, 96, np.random.default_rng(k)) for k in range(20)}
    assert picks == {"tr", "bl"}


def test_planted_png_and_mask_reach_the_audit_exactly(tmp_path):
    """A planted image written as PNG is read back by the audit's preprocessing byte for byte, and the preset's
    `patches` region (file, column artifact_mask) is exactly the planted square on the model grid."""
    need(HAM)
    from masks import build_regions
    from audit.preprocess import image_to_grid, load_rgb
    df = vd.task_table("ham", SHARED).head(3)
    spec = vd.spec_for(96)
    preset = yaml.safe_load((VAL / "presets" / "ham_planted.yaml").read_text())
    rs = build_regions(preset["regions"])
    for r in df.to_dict("records"):
        grid = image_to_grid(load_rgb(r["image"]), spec)
        out, m = vd.plant(grid, "green_square", "br")
        p_img, p_mask = tmp_path / f"{r['image_id']}.png", tmp_path / f"{r['image_id']}_artifact.png"
        Image.fromarray(out).save(p_img)
        Image.fromarray(np.where(m, 255, 0).astype(np.uint8)).save(p_mask)
        back = image_to_grid(load_rgb(p_img), spec)
        assert np.array_equal(back, out)
        row = {**r, "image": str(p_img), "artifact_mask": str(p_mask)}
        reg = rs.compute(back, row, spec, back.shape[:2])
        assert np.array_equal(reg["patches"].mask, m)
        assert reg["lesion"].mask is not None and reg["lesion"].note == "file"
        twin = rs.compute(grid, {**r, "artifact_mask": ""}, spec, (224, 224))
        assert twin["patches"].mask is None                 # unplanted: the region is absent, not empty


# ---------------------------------------------------------------------------- the audit sees the artifact

class GreenNet(torch.nn.Module):
    """Hand-built: channel 0 fires on saturated green (the planted square), channel 1 on dark pixels (lesions);
    both raise the logit of class 0 ("mel"). Grad-CAM at `features` (12×12 at 96 px)."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 2, kernel_size=8, stride=8), torch.nn.ReLU())
        self.head = torch.nn.Linear(2, 2)
        with torch.no_grad():
            w = torch.zeros(2, 3, 8, 8)
            w[0, 0], w[0, 1], w[0, 2] = -1 / 64, 1 / 64, -1 / 64       # G − R − B on normalised input
            w[1, :] = -1 / (3 * 64)                                    # darkness
            self.features[0].weight.copy_(w)
            self.features[0].bias.copy_(torch.tensor([-1.0, -0.2]))
            self.head.weight.copy_(torch.tensor([[8.0, 1.0], [0.0, 0.0]]))
            self.head.bias.copy_(torch.tensor([-0.5, 0.0]))

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def test_audit_artifact_fraction_higher_on_planted_than_twin_and_removal_flips(tmp_path):
    need(HAM)
    from masks import build_regions
    from audit.cam import grad_cam
    from audit.counterfactual import counterfactual_batch
    from audit.preprocess import image_to_grid, load_rgb, mask_to_grid, normalize
    from audit.scores import score_batch
    df = vd.task_table("ham", SHARED)
    df = pd.concat([df[df["label"] == "mel"].head(3), df[df["label"] == "nv"].head(3)])
    spec = vd.spec_for(96)
    rs = build_regions(yaml.safe_load((VAL / "presets" / "ham_planted.yaml").read_text())["regions"])
    model = GreenNet().eval()
    planted, twins, masks_p, masks_t = [], [], [], []
    for r in df.to_dict("records"):
        grid = image_to_grid(load_rgb(r["image"]), spec)
        les = mask_to_grid(np.asarray(Image.open(r["mask"]).convert("L")) > 127, spec, (224, 224))
        out, m = vd.plant(grid, "green_square", vd.pick_corner(les, 96, np.random.default_rng(0)))
        p_mask = tmp_path / f"{r['image_id']}_artifact.png"
        Image.fromarray(np.where(m, 255, 0).astype(np.uint8)).save(p_mask)
        reg = rs.compute(out, {**r, "artifact_mask": str(p_mask)}, spec, (96, 96))
        masks_p.append({k: torch.from_numpy(v.mask) for k, v in reg.items() if v.mask is not None})
        # the twin is scored on the same square (where the artifact would be) to compare like with like
        masks_t.append({k: torch.from_numpy(v.mask) for k, v in reg.items() if v.mask is not None})
        planted.append(out)
        twins.append(grid)
    kinds = dict(rs.kinds)
    x = normalize(np.stack(planted + twins), spec)
    res = grad_cam(model, x, "features", 0)
    sc = score_batch(res.cams, masks_p + masks_t, kinds, 96)
    n = len(planted)
    f_p, f_t = sc["frac_patches"][:n], sc["frac_patches"][n:]
    assert np.all(np.isfinite(f_p)) and np.all(np.isfinite(f_t))
    assert np.all(f_p > f_t + 0.3), (f_p, f_t)
    assert np.all(f_p > 0.5)
    assert np.all(sc["frac_lesion"][:n] < sc["frac_lesion"][n:])
    # the counterfactual removal of the planted square lowers P(mel) and flips the decision back
    probs = torch.softmax(res.logits, 1).detach().numpy()
    assert (probs[:n].argmax(1) == 0).all() and (probs[n:].argmax(1) == 1).all()
    cf = counterfactual_batch(model, torch.from_numpy(np.stack(planted)), masks_p, ["patches"], spec,
                              torch.zeros(n, dtype=torch.long), probs[:n], "cpu")
    assert (cf["cf_status_patches"] == "ok").all()
    assert (cf["cf_flip_patches"] == 1.0).all() and (cf["cf_delta_patches"] < -0.1).all()


# ------------------------------------------------------------------------------------ the presets and files

@pytest.mark.parametrize("name", ["ham_planted.yaml", "cxr_planted.yaml"])
def test_presets_are_valid(name):
    from audit.gates import evaluate_gates
    from masks import build_regions
    p = yaml.safe_load((VAL / "presets" / name).read_text())
    rs = build_regions(p["regions"])
    assert "artifact" in rs.kinds.values() and "target" in rs.kinds.values()
    evaluate_gates(p["gates"], None)   # every gate name and threshold is valid (ConfigError otherwise)


def test_written_manifests_are_consistent():
    """When the validation data have been prepared (benchmarks/validation/valdata.py), the two manifests share
    the test split, the shortcut variant marks exactly the training positives, and planted PNGs equal
    plant(cache)."""
    d = vd.WORK / "ham_96"
    if not (d / "prepared.json").exists() or not (d / "cache.npz").exists():
        pytest.skip(f"validation data not prepared under {d} (python benchmarks/validation/valdata.py ham)")
    kw = {"dtype": {"artifact_corner": str}, "keep_default_na": False}
    c, s = pd.read_csv(d / "manifest_clean.csv", **kw), pd.read_csv(d / "manifest_shortcut.csv", **kw)
    assert c["image_id"].is_unique and list(c["image_id"]) == list(s["image_id"])
    te = c["split"] == "test"
    assert c.loc[te, ["image", "artifact"]].equals(s.loc[te, ["image", "artifact"]])
    tr = s["split"] != "test"
    assert ((s.loc[tr, "artifact"] == 1) == (s.loc[tr, "label"] == "mel")).all()
    assert (c.loc[tr, "artifact"] == 0).all()
    for lab in ("mel", "nv"):  # test: half of each class
        sub = c[te & (c["label"] == lab)]
        assert abs(sub["artifact"].mean() - 0.5) < 0.02
    assert c.groupby("lesion_id")["split"].nunique().max() == 1
    z = np.load(d / "cache.npz")
    pos = {k: i for i, k in enumerate(z["image_id"])}
    rows = s[s["artifact"] == 1].head(4)
    for r in rows.to_dict("records"):
        want = vd.plant(z["img"][pos[r["image_id"]]], "green_square", r["artifact_corner"])
        assert np.array_equal(np.asarray(Image.open(r["image"]).convert("RGB")), want[0])
        assert np.array_equal(np.asarray(Image.open(r["artifact_mask"])) > 127, want[1])
