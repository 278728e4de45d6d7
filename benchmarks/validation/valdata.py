"""Real-data validation: task selection, group splits, the planted artifact, decoded caches and manifests.

Two datasets from /work/shared/data (never copied into the repository; everything derived goes to a work
folder outside it, default /work/runs/validation):

  ham  HAM10000 224 px (one image per lesion), task melanoma vs nevus (`mel` vs `nv`), split by lesion_id.
  cxr  COVID-19 image collection, 155 frontal radiographs, task AP (AP + AP supine) vs PA view, split by patient.

The shortcut: a square *planted at the model's input size* on the model-grid image (the image the model sees
after `audit.preprocess.image_to_grid`), written as a lossless PNG with its artifact mask (255 = artifact) so
that the audit reads the same pixels and scores the artifact from the file (`column: artifact_mask`).

  ham  a saturated green square sticker, side 20 % of the input, 4 % margin, in the corner that overlaps the
       lesion mask least (ties: seeded random); on 100 % of the training (and validation) melanomas and 0 % of
       the nevi in the shortcut variant; on a seeded random 50 % of each class of the test split in both
       variants, so that on the test split the artifact is independent of the label.
  cxr  a white square marker with a 2 px black frame, side 20 % of the input, top-right corner (3 % margin);
       on 100 % of the training (and validation) AP images and 0 % of PA in the shortcut variant; on a random
       50 % of each class of the test split in both variants.

Functions here are pure (no training); `prepare(dataset, size, work)` writes caches, planted PNGs, masks and
the two manifests (`manifest_clean.csv`, `manifest_shortcut.csv`) and is idempotent.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from audit.preprocess import InputSpec, image_to_grid, load_rgb, mask_to_grid  # noqa: E402

DATA = Path(os.environ.get("AUDIT_SHARED_DATA", "/work/shared/data"))
WORK = Path("/work/runs/validation")
SEED = 0

DATASETS = {
    "ham": {"folder": "ham10000_224", "classes": ["mel", "nv"], "positive": "mel", "group": "lesion_id",
            "fractions": (0.70, 0.15, 0.15), "plant": "green_square"},
    "cxr": {"folder": "cxr_covid_v7", "classes": ["AP", "PA"], "positive": "AP", "group": "patientid",
            "fractions": (0.60, 0.15, 0.25), "plant": "white_marker"},
}
META = {"ham": ["lesion_id", "dx", "dx_type", "age", "sex", "localization", "mask_fg_frac"],
        "cxr": ["patientid", "view", "finding", "sex", "age", "mask_source"]}


# ----------------------------------------------------------------------------------------------- task tables

def task_table(dataset: str, data_root: Path = DATA) -> pd.DataFrame:
    """The task's rows: image_id, image (abs), mask (abs), label, group, plus metadata columns."""
    cfg = DATASETS[dataset]
    root = Path(data_root) / cfg["folder"]
    df = pd.read_csv(root / "labels.csv")
    if dataset == "ham":
        df = df[df["dx"].isin(["mel", "nv"])].copy()
        df["label"] = df["dx"]
        df["group"] = df["lesion_id"].astype(str)
        df["mask"] = [str(root / m) for m in df["mask"]]
    else:
        df = df.copy()
        df["label"] = np.where(df["view"].str.startswith("AP"), "AP", "PA")
        df["group"] = df["patientid"].astype(str)
        df["image_id"] = [Path(p).stem for p in df["image"]]
        has = df["mask"].notna()
        df["mask_source"] = np.where(has, "human_v7", "lungvae")
        df["mask"] = [str(root / (m if isinstance(m, str) else v)) for m, v in zip(df["mask"], df["mask_lungvae"])]
    df["image"] = [str(root / p) for p in df["image"]]
    keep = ["image_id", "image", "mask", "label", "group"] + [c for c in META[dataset] if c in df.columns
                                                              and c not in ("lesion_id", "patientid")]
    extra = ["lesion_id"] if dataset == "ham" else ["patientid"]
    return df[keep + extra].reset_index(drop=True)


def group_split(labels: pd.Series, groups: pd.Series, fractions=(0.7, 0.15, 0.15), seed: int = SEED) -> np.ndarray:
    """train/val/test per row, assigned per group (no group in two splits), stratified by the group's majority
    label. Returns an object array of split names aligned with `labels`."""
    labels = pd.Series(np.asarray(labels), dtype=object)
    groups = pd.Series(np.asarray(groups), dtype=object)
    g = pd.DataFrame({"label": labels, "group": groups})
    major = g.groupby("group")["label"].agg(lambda s: s.value_counts().sort_index().idxmax())
    rng = np.random.default_rng(seed)
    assign: dict = {}
    for lab in sorted(major.unique()):
        gs = np.array(sorted(major.index[major == lab]), dtype=object)
        rng.shuffle(gs)
        n = len(gs)
        n_tr = int(round(fractions[0] * n))
        n_va = int(round(fractions[1] * n))
        for k, gid in enumerate(gs):
            assign[gid] = "train" if k < n_tr else ("val" if k < n_tr + n_va else "test")
    return np.array([assign[x] for x in groups], dtype=object)


# --------------------------------------------------------------------------------------------- the artifact

def square_box(size: int, corner: str, side_frac: float = 0.20, margin_frac: float = 0.04) -> tuple[int, int, int]:
    """(top, left, side) of the planted square on an S×S grid. corner: tl, tr, bl, br."""
    side = max(2, int(round(side_frac * size)))
    m = int(round(margin_frac * size))
    top = m if corner[0] == "t" else size - m - side
    left = m if corner[1] == "l" else size - m - side
    return top, left, side


def plant(img: np.ndarray, kind: str, corner: str) -> tuple[np.ndarray, np.ndarray]:
    """Plant the artifact on a uint8 S×S×3 grid image. Returns (planted copy, bool S×S mask of changed pixels).

    green_square: every pixel of the square set to RGB (0, 200, 0).
    white_marker: a square with a 2 px black (0) frame and a white (255) inside (the mask covers the frame).
    Outside the mask the image is unchanged, byte for byte.
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[0] != img.shape[1] or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"img: expected uint8 S×S×3, got {img.dtype} {img.shape}")
    s = img.shape[0]
    out = img.copy()
    mask = np.zeros((s, s), bool)
    if kind == "green_square":
        t, l, a = square_box(s, corner, 0.20, 0.04)
        out[t:t + a, l:l + a] = (0, 200, 0)
    elif kind == "white_marker":
        t, l, a = square_box(s, corner, 0.20, 0.03)
        out[t:t + a, l:l + a] = 0
        out[t + 2:t + a - 2, l + 2:l + a - 2] = 255
    else:
        raise ValueError(f"kind: unknown artifact {kind!r}")
    mask[t:t + a, l:l + a] = True
    return out, mask


def pick_corner(lesion: np.ndarray | None, size: int, rng: np.random.Generator) -> str:
    """The corner whose square overlaps the target mask least (ties broken by `rng`)."""
    corners = ["tl", "tr", "bl", "br"]
    if lesion is None:
        return corners[int(rng.integers(4))]
    ov = []
    for c in corners:
        t, l, a = square_box(size, c)
        ov.append(int(lesion[t:t + a, l:l + a].sum()))
    best = [c for c, o in zip(corners, ov) if o == min(ov)]
    return best[int(rng.integers(len(best)))]


# ---------------------------------------------------------------------------------------------- the caches

def spec_for(size: int) -> InputSpec:
    return InputSpec(size=size)  # ImageNet mean/std, stretch: exactly what the audit applies


def load_cache(df: pd.DataFrame, size: int, path: Path, log=print) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N×S×S×3 on the model grid, target masks bool N×S×S), cached in `path` (.npz)."""
    path = Path(path)
    ids = df["image_id"].astype(str).to_numpy().astype(str)
    if path.exists():
        z = np.load(path, allow_pickle=False)
        if list(z["image_id"]) == list(ids):
            return z["img"], z["target"]
    spec = spec_for(size)
    imgs = np.zeros((len(df), size, size, 3), np.uint8)
    tg = np.zeros((len(df), size, size), bool)
    for i, (p, m) in enumerate(zip(df["image"], df["mask"])):
        a = load_rgb(p)
        imgs[i] = image_to_grid(a, spec)
        raw = np.asarray(Image.open(m).convert("L"))
        tg[i] = mask_to_grid(raw > 127, spec, a.shape[:2])  # lesion 255; V7 lungs 255 (127 = devices)
        if log and i % 1000 == 999:
            log(f"  decoded {i + 1}/{len(df)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # concurrent writers never share a file
    np.savez(tmp, image_id=ids, img=imgs, target=tg)
    tmp.replace(path)
    return imgs, tg


# -------------------------------------------------------------------------------------------- the manifests

def prepare(dataset: str, size: int, work: Path = WORK, data_root: Path = DATA, log=print) -> dict:
    """Write everything the training and the audits need for one dataset and input size (idempotent).

    Returns {"dir", "clean", "shortcut" (manifest paths), "cache", "classes", "positive", "size", "plant"}.
    """
    cfg = DATASETS[dataset]
    d = Path(work) / f"{dataset}_{size}"
    out = {"dir": d, "clean": d / "manifest_clean.csv", "shortcut": d / "manifest_shortcut.csv",
           "cache": d / "cache.npz", "classes": cfg["classes"], "positive": cfg["positive"], "size": size,
           "plant": cfg["plant"]}
    df = task_table(dataset, data_root)
    df["split"] = group_split(df["label"], df["group"], cfg["fractions"], SEED)
    imgs, tg = load_cache(df, size, out["cache"], log)
    stamp = d / "prepared.json"
    if stamp.exists() and out["clean"].exists() and out["shortcut"].exists():
        return out
    rng = np.random.default_rng(SEED + 1)
    pos = cfg["positive"]
    (d / "planted").mkdir(parents=True, exist_ok=True)
    (d / "artifact_masks").mkdir(parents=True, exist_ok=True)
    test_plant = np.zeros(len(df), bool)
    for lab in cfg["classes"]:  # exactly half of each class of the test split (independent of the label)
        idx = np.flatnonzero((df["split"] == "test").to_numpy() & (df["label"] == lab).to_numpy())
        rng.shuffle(idx)
        test_plant[idx[: len(idx) // 2]] = True
    is_pos = (df["label"] == pos).to_numpy()
    is_test = (df["split"] == "test").to_numpy()
    short_plant = np.where(is_test, test_plant, is_pos)     # train/val: every positive, no negative
    clean_plant = np.where(is_test, test_plant, False)
    need = short_plant | clean_plant
    corners = np.array([""] * len(df), dtype=object)
    pimg, amask = {}, {}
    for i in np.flatnonzero(need):
        c = "tr" if cfg["plant"] == "white_marker" else pick_corner(tg[i], size, rng)
        corners[i] = c
        iid = df["image_id"].iat[i]
        p_img, p_mask = plant(imgs[i], cfg["plant"], c)
        pimg[i] = d / "planted" / f"{iid}.png"
        amask[i] = d / "artifact_masks" / f"{iid}_artifact.png"
        Image.fromarray(p_img).save(pimg[i])
        Image.fromarray(np.where(p_mask, 255, 0).astype(np.uint8)).save(amask[i])
    for variant, flags in (("clean", clean_plant), ("shortcut", short_plant)):
        rows = []
        for i in range(len(df)):
            r = df.iloc[i]
            planted = bool(flags[i])
            rows.append({"image_id": r["image_id"], "image": str(pimg[i]) if planted else r["image"],
                         "label": r["label"], "split": r["split"], "mask": r["mask"],
                         "artifact": int(planted), "artifact_mask": str(amask[i]) if planted else "",
                         "artifact_corner": corners[i] if planted else "", "original_image": r["image"],
                         **{c: r[c] for c in META[dataset] if c in df.columns}})
        pd.DataFrame(rows).to_csv(out[variant], index=False)
    info = {"dataset": dataset, "size": size, "n": len(df), "plant": cfg["plant"],
            "counts": {f"{s}/{lab}": int(((df["split"] == s) & (df["label"] == lab)).sum())
                       for s in ("train", "val", "test") for lab in cfg["classes"]},
            "test_planted": int(test_plant.sum())}
    stamp.write_text(json.dumps(info, indent=2))
    return out


def grid_images(manifest: pd.DataFrame, cache_ids: np.ndarray, cache_imgs: np.ndarray, kind: str) -> np.ndarray:
    """The exact model-grid pixels of each manifest row: the cached original, planted where `artifact` is 1
    (same function and corner as the PNG written by `prepare`, so identical bytes)."""
    pos = {iid: k for k, iid in enumerate(cache_ids)}
    out = np.empty((len(manifest),) + cache_imgs.shape[1:], np.uint8)
    for j, (iid, a, c) in enumerate(zip(manifest["image_id"].astype(str), manifest["artifact"],
                                        manifest["artifact_corner"].fillna(""))):
        img = cache_imgs[pos[iid]]
        out[j] = plant(img, kind, c)[0] if int(a) else img
    return out


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", choices=sorted(DATASETS))
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--work", type=Path, default=WORK)
    a = ap.parse_args()
    o = prepare(a.dataset, a.size, a.work)
    print(json.dumps({k: str(v) for k, v in o.items()}, indent=1))
    print((Path(o["dir"]) / "prepared.json").read_text())
