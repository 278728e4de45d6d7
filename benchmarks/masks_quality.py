"""Quality of the classical region detectors on real data (a benchmark, not a unit test).

    python benchmarks/masks_quality.py [--quick]

Data: ../shared/data next to the repository (override with AUDIT_SHARED_DATA). Prints a table and writes
benchmarks/results/masks_quality.md. Everything is evaluated on the 224-px model grid (InputSpec stretch),
as the audit uses it.

- lesion heuristic vs official HAM10000 masks (ham10000_sample at 600×450, and ~500 of ham10000_224): median Dice
- lung heuristic vs the human V7 lung masks (cxr_covid_v7, value 255), and Shenzhen masks (> 127): median Dice
- artifact detectors vs Bissoto et al. 2020 labels on isic2017_artifacts: AUROC with a bootstrap 95 % CI, and
  on ~2,400 held-out ISIC 2017 images when AUDIT_ISIC_HELDOUT names the folder `isic_heldout.py` builds
- ink and patches on HAM10000 images labelled "marking" (ham10000_artefact_ids) vs random other images: AUROC
  and flag rates (Wilson 95 % CI); and on synthetic surgical-marker strokes (masks/synth_ink.py) drawn on real
  HAM10000 skin away from the official lesion mask, at 96, 128, 224 px and full resolution: detection rate,
  false-alarm rate on the same images without the stroke, patches' rate on both, the stroke's coverage
  by the ink mask
- text detector: recall on markers stamped onto real radiographs (font, size, position, polarity varied) and the
  share of the human lung mask it marks on unstamped images
- milliseconds per 224-px image per detector (one core)
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # timings are per core
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.preprocess import InputSpec, image_to_grid, load_rgb, mask_to_grid  # noqa: E402
from audit.stats import proportion_ci  # noqa: E402
from masks.files import read_mask_file  # noqa: E402
from masks.registry import RegionContext, _entry  # noqa: E402
from masks.synth_ink import COLOURS, SHAPES, draw_stroke  # noqa: E402

SPEC = InputSpec(size=224, resize="stretch")
ARTIFACTS = {"ruler": "bissoto_ruler", "ink": "bissoto_ink", "dark_corners": "bissoto_dark_corner",
             "patches": "bissoto_patches", "gel_border": "bissoto_gel_border"}


NOTES = """Notes
- ham10000_sample rows are the 600×450 originals brought to the 224 grid (stretch); Dice is measured there.
- lungs: template matching with an anatomical shape prior (a lung-shaped superellipse per lung: lower
  costophrenic angle, widening towards the base, straight mediastinal side; positions/sizes from a fixed
  geometric grid), chosen by its thin surrounding ring minus 0.6 × its inside, both lungs chosen together
  (apices and bases roughly level), then refined at 224 px: pixels near the outline move in or out by their
  darkness relative to that lung, weighed against the distance to the template (a few pixels at most).
  Earlier runs of this script: Otsu dark fields 0.620 (V7) / 0.766 (Shenzhen); a plain superellipse 0.799 /
  0.794. The constants were searched on each patient fold of the "per patient fold" row and checked on the
  other (the search itself is not in the repository); both folds chose the same shape and weights and differed
  only in the refinement strength (2 vs 3; 2 kept). The shape was designed looking at overlays of all V7
  images, so V7 is not fully held out; Shenzhen (n = 10) is independent. A few images get worse than with the
  plain superellipse, badly where a template lands on dark background beside a narrow body. No heart notch.
  Prefer `source: file` masks (the chest_xray preset does, with the heuristic as fallback).
- ink, marker strokes (#27): the detector described below (the "faint dye" evidence) missed wide surgical-marker
  strokes (Winkler et al. 2019 style, 10-16 px at 224: a dark violet stroke loses blue too, and the blue-darkness
  and hair exclusions removed it) and `patches` took them for stickers. Now `ink` also has stroke evidence
  (`masks.detect_derm.ink_strokes`): optical density against the median skin of the same image outside the
  lesion heuristic; chroma q = max(a_G, a_R) − a_B − max(0, a_G / 2 − a_R) above max(0.15, 5 σ_skin) with green
  or red darkened by ≥ 0.15, or black: min(a) above max(0.5, 5 σ_skin) and a_B − a_R ≤ 0.1; then per component
  after a Euclidean opening of 0.9 % of the side: width (2 × median distance transform on the skeleton − 1) in
  1.8-14 % of the side, a stroke (skeleton ≥ 6 % of the side and ≥ 3 × its width) or a dot, and not the lesion's
  own pigment. The faint-dye evidence no longer counts on the lesion heuristic and a 5 % ring round it (it
  flagged violaceous vessels and blue-grey speckles: 5 of 96 clean images in the synthetic rows before).
  `patches` drops components that are thin and elongated (area > 4.5 × the largest inscribed disk, that disk at
  most 11 % of the side wide) or claimed by `ink_strokes`. Before, on the same synthetic images (seed 0; after: the
  table): ink on inked 0.479 (96 px) / 0.542 (224 px) / 0.431 (full resolution), on the clean copies 0.042 /
  0.062 / 0.034, patches on inked 0.125 / 0.135 / 0.052; black strokes were found on 5 of 82, and the median
  share of the stroke inside the ink mask was 0.00-0.02. The 35 Bissoto images before: ink AUROC 0.821 (sensitivity 6/12, specificity 23/23), ruler 0.933,
  dark_corners 1.000, patches 1.000; HAM10000 marking AUROC 0.879 (vs ruler + bubble) and 0.895 (vs random).
  After (the table): ruler, dark_corners and patches unchanged; ink on the 35 0.817 (sensitivity 5/12: the
  faint-dye evidence no longer counts on the lesion and the 5 % ring round it); HAM10000 marking 0.932 / 0.928.
  The stroke constants were set on the 224-px synthetic rows of seed 0 and the real HAM10000 random sample
  (their false alarms looked at by eye: two "clean" images carry real, unlabelled ink, ISIC_0031263 and the
  image of case 11; real markings are left out of the synthetic pool); the 96 / 128 px and full-resolution
  rows and the Bissoto rows were not used to choose them. A scratch run with another seed (synth_cases(...,
  seed=1): other images, placements and densities) gave ink on inked / clean, patches on inked: 96 px 0.969 /
  0.000, 0.010; 224 px 0.979 / 0.031, 0.010; full resolution 0.966 / 0.034, 0.000. Still missed: dots beside gel bubbles (the glare
  margin), a dark purple blot with hair (ISIC_0031524), ink under a pixel wide at 224.
- ink: violet and blue pen dye absorbs green (and red) but lets blue through, while melanin, blood, hair and
  rulers absorb blue at least as much. Per pixel: the log darkening of each channel against the brightest skin
  nearby (window 10 % of the side); evidence = green loss − blue loss − max(0, green loss / 2 − red loss);
  vignette, glare, stickers and thin hair/ruler lines excluded; score = image mean of the evidence above a floor
  (0.1 or 4× the image's own noise). Earlier runs of this script: AUROC 0.467 (hue thresholds). Still under
  0.85: of the positives scoring 0 (see the row), two carry violet ink at full resolution that shrinks below a
  pixel at 224 (short dashes, faint hatching) and one has dark specks without a violet hue; tied at the bottom
  with most negatives they cap the AUROC whatever the ranking of the rest (the row states the cap; with 12
  positives and 23 negatives each misordered pair costs 1/276 = 0.0036, so under a cap of 0.853 the target
  needs every other positive above every negative). The HAM10000 rows are held out (the detector was designed
  on isic2017_artifacts): images labelled "marking" in ham10000_artefact_ids, those present in ham10000_224. Tried and not adopted, on the held-out set's design half: floors 0.03-0.1 with
  noise multipliers 0-4, windows 6-15 %, dropping the blue-darkness or hair exclusions, excluding the lesion.
  Without smoothing, a floor low enough to help flags plain sensor noise on clean skin (a unit test).
  Smoothing the evidence (Gaussian σ = 1 px) with a floor of 0.05 or 2× noise and threshold 1.2e-4 did not
  flag it. In a run of this script it raised the ISIC figures: held out 0.803 → 0.830 (check half 0.801 →
  0.825), and the 35 images 0.821 → 0.862. But the only held-out images at full quality, the HAM10000 rows,
  fell: 0.879 → 0.786 (vs ruler + bubble) and 0.895 → 0.810 (vs random), with 10 positives. The 256-px copies
  are smoothed by compression, exactly where this change acts. σ had been picked among ties on the design
  half knowing the 35 images' result. So it was not adopted. Also not adopted: ignoring a thin strip at the
  image edge (fitted to these 35 images, and it would hide real ink at the edge). Later scratch runs (AUROC:
  held-out design / check half, the 35, HAM marking vs ruler + bubble / vs random; the detector as shipped:
  0.805 / 0.801, 0.821, 0.879 / 0.895), none adopted: a high quantile of the evidence as tie-break
  (0.833 / 0.817, 0.779, 0.850 / 0.869); oriented line filters of 5-9 px before the floor (best 0.821 / 0.828,
  0.797, 0.843 / 0.853); hysteresis with a minimum stroke length (≤ 0.820 / 0.823, ≤ 0.833, ≤ 0.843 / 0.889);
  letting dark violet strokes through the hair and blue-darkness exclusions (thick dark purple hatching is
  missed today) flagged blue-grey lesions and hair (≤ 0.796 / 0.787), also per thin long component with
  ink-like median colour ratios (no figure rose); a ratio form of the blue-darkness exclusion (0.75 / 0.74,
  0.76, 0.76 / 0.83); a local violet-tint tie-break (evidence averaged with σ = 5 px, max − median) for images
  with nothing above the floor (0.840 / 0.827, 0.837, 0.850 / 0.876: the one variant up on all ISIC figures,
  still under 0.85 on the 35, and down on HAM through one positive). Whatever raised the compressed held-out
  copies lowered the full-quality HAM10000 rows. On the 35 images, 6 of the 12 positives rank above every
  negative; a faint dotted blue circle (ISIC_0012335) scores just above the noise; the other 5 carry ink that
  is faint or sub-pixel at 224 px (at 448, 640, 768 and 1,024 px the shipped detector scored lower: 0.774,
  0.779, 0.750, 0.752), so this sample's AUROC turns on how noise ranks. Per-image stain estimation
  (Macenko et al. 2009: the plane of the local absorbance vectors, two stains at its 1st / 99th percentile
  angles) failed as evidence (the plane's normal: ≤ 0.66 everywhere; the plane is nearly one-dimensional,
  eigenvalues 0.956 / 0.035 / 0.008 pooled) and as a gate on the shipped evidence (0.810 / 0.793, 0.835,
  0.846 / 0.887; paired bootstrap of the design-half gain +0.005 [−0.004, 0.015]).
- dark_corners: share of each corner triangle (legs 6 % of the side) darker than half the central field's
  median brightness, after a 3-px grey closing (hairs), averaged over the four corners; threshold 0.07.
  Redesigned this way on the design half of the held-out set (a seeded random half; the "check half" in its
  row is the other half): 6 % vs 12 % corners, darker than 0.4 / 0.5 / 0.6 of the field, closings of 0-5 px
  and openings were compared there; the threshold is the 95th percentile of that half's negatives. The
  former score (share of near-black border-connected pixels in 12 % corner squares, threshold 0.03) reached
  AUROC 0.958 on the 35 images (this script) but 0.750 on the held-out set (a scratch run scoring it the
  same way, before this script had held-out rows): Bissoto's label includes mild vignettes. The flagged
  random HAM10000 images are listed to be checked by eye; of the six flagged in the run shown,
  ISIC_0033944 and ISIC_0033231 show dark corners, the other four a lesion or dense hair reaching a corner
  (relative darkness cannot tell them apart; their masks keep to the zone outside 0.9 × the inscribed
  circle, so the lesion is not marked as artifact).
- held-out rows: 2,415 ISIC 2017 challenge images labelled by Bissoto et al. and not among the 35 above, from
  256×256 JPEG copies in a public GitHub repository (`benchmarks/isic_heldout.py` says which and builds the
  set; not in ../shared/data). The copies are stretched and heavily compressed: ruler ticks and thin pen lines
  blur, so ruler and ink may rate lower there than on full-resolution images, and a change that helps there
  may not help at full resolution (see ink).
- patches: flat, solid blobs whose CIELAB (a*, b*) lies more than 30 from the image's own median skin colour
  (lightness std < 4 over 5 px, ≥ 1 % of the image, holding a disk of 2 % of the side), outside the central
  disk of a quarter of the half-side (the lesion: smooth magenta or brown lesions pass the other tests);
  threshold 0.01, any such blob. Redesigned on the held-out design half (chroma 25 / 30 / 35, smoothness 4 / 6 /
  9, central disk 0 / 0.25 / 0.4 / 0.5); the 95th percentile of that half's negatives is 0. The central disk
  cost nothing on the design half (AUROC 0.917 vs 0.919 in the scratch search) and 0.02 on the check half, and
  without it 16 of 500 random HAM10000 images were flagged in a scratch run, all of them lesions; the one
  the HAM row lists now (ISIC_0031845) is a large, smooth, off-centre lesion. The former rule (saturated pixels of a non-skin hue) reached AUROC 1.000 on the 35 images but
  0.837 on the held-out set: it missed orange, salmon and pale cyan stickers and flagged whole images with a
  blue or red colour cast.
- gel_border: outward-brightening circular edge (the plate rim) in ≥ 3 of 4 quadrants, away from the black
  vignette. Before: bright colourless border band, AUROC 0.594. In this 35-image sample gel_border and
  dark_corner are nearly exclusive (12 of 14 negatives have dark corners), far more than in the full Bissoto
  annotation (2,594 images: 18 % of dark-corner images also have a gel border): a plain "no black corners"
  score would reach ~0.89 here and was deliberately not used. n = 35: CIs are wide.
- text: the "wrongly marked lung" share is an upper bound: many images of this collection carry real
  burned-in score digits and arrows inside the lung fields.
"""


def data_dir() -> Path:
    env = os.environ.get("AUDIT_SHARED_DATA")
    return Path(env) if env else (ROOT / ".." / "shared" / "data").resolve()


def dice(a: np.ndarray | None, b: np.ndarray) -> float:
    if a is None:
        return 0.0
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else float("nan")


def run(name: str, grid: np.ndarray, params: dict | None = None):
    e = _entry(name)
    ctx = RegionContext(name, e.kind, {**e.params, **(params or {})}, {}, SPEC, grid.shape[:2], {})
    return e.fn(grid, ctx)


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, s))


def boot_ci(y: np.ndarray, s: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        if len(np.unique(y[i])) == 2:
            vals.append(auroc(y[i], s[i]))
    return (float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))) if vals else (math.nan, math.nan)


def lesion_bench(d: Path, n224: int, rows: list, times: dict) -> None:
    for label, folder, limit in (("ham10000_sample (600×450)", "ham10000_sample", None),
                                 (f"ham10000_224 (n≈{n224})", "ham10000_224", n224)):
        df = pd.read_csv(d / folder / "labels.csv")
        if limit:
            df = df.sample(n=min(limit, len(df)), random_state=0)
        ds = []
        for r in df.itertuples():
            img = load_rgb(d / folder / r.image)
            g = image_to_grid(img, SPEC)
            gt = mask_to_grid(read_mask_file(d / folder / r.mask) > 127, SPEC, img.shape[:2])
            t = time.perf_counter()
            res = run("lesion", g)
            times.setdefault("lesion", []).append(time.perf_counter() - t)
            ds.append(dice(res.mask, gt))
        ds = np.array(ds)
        rows.append(("lesion heuristic vs official masks", label, len(ds), f"median Dice {np.median(ds):.3f} "
                     f"(IQR {np.percentile(ds, 25):.2f}–{np.percentile(ds, 75):.2f})", "≥ 0.80",
                     np.median(ds) >= 0.80))


def fold_of(ids: list[str]) -> np.ndarray:
    """0 (fold A) / 1 (fold B) per item: fold A is a seeded half of the distinct patient ids (the split the
    lung constants were tuned on, one fold at a time)."""
    uniq = sorted(set(ids))
    perm = np.random.default_rng(0).permutation(len(uniq))
    a = {uniq[i] for i in perm[: len(uniq) // 2]}
    return np.array([0 if i in a else 1 for i in ids])


def lung_bench(d: Path, rows: list, times: dict) -> list:
    df = pd.read_csv(d / "cxr_covid_v7" / "labels.csv")
    df = df[df["mask"].notna()]
    ds, cases, pids = [], [], []
    for r in df.itertuples():
        img = load_rgb(d / "cxr_covid_v7" / r.image)
        g = image_to_grid(img, SPEC)
        raw = read_mask_file(d / "cxr_covid_v7" / r.mask)
        gt = mask_to_grid(raw == 255, SPEC, img.shape[:2])
        if not gt.any():
            continue
        t = time.perf_counter()
        res = run("lungs", g)
        times.setdefault("lungs", []).append(time.perf_counter() - t)
        ds.append(dice(res.mask, gt))
        cases.append((g, gt))
        pids.append(str(r.patientid))
    ds = np.array(ds)
    rows.append(("lung heuristic vs human V7 masks (255)", "cxr_covid_v7", len(ds),
                 f"median Dice {np.median(ds):.3f} (IQR {np.percentile(ds, 25):.2f}–{np.percentile(ds, 75):.2f})",
                 "≥ 0.80", np.median(ds) >= 0.80))
    # the two patient folds the constants were tuned on (see NOTES)
    fold = fold_of(pids)
    rows.append(("lung heuristic per patient fold (A / B)", "cxr_covid_v7", len(ds),
                 " / ".join(f"median Dice {np.median(ds[fold == k]):.3f} (n={int((fold == k).sum())})"
                            for k in (0, 1)), "(extra)", None))
    sz = d / "shenzhen_sample"
    if sz.is_dir():
        ds2 = []
        for p in sorted((sz / "train_images").glob("*")):
            mp = sz / "train_masks" / (p.stem + "_mask.png")
            if not mp.exists():
                continue
            img = load_rgb(p)
            g = image_to_grid(img, SPEC)
            gt = mask_to_grid(read_mask_file(mp) > 127, SPEC, img.shape[:2])
            ds2.append(dice(run("lungs", g).mask, gt))
        if ds2:
            rows.append(("lung heuristic vs Shenzhen masks", "shenzhen_sample", len(ds2),
                         f"median Dice {np.median(ds2):.3f}", "(extra)", None))
    return cases


def auroc_ceiling(y: np.ndarray, s: np.ndarray) -> float:
    """The highest AUROC any re-ranking can reach while the positives scoring ≤ 0 stay tied with the negatives
    scoring ≤ 0 (and below the others): every other positive above every negative."""
    pos0, neg = int(((s <= 0) & (y == 1)).sum()), s[y == 0]
    k = int((neg <= 0).sum())
    return 1.0 - (pos0 * (len(neg) - k) + 0.5 * pos0 * k) / (int(y.sum()) * len(neg))


def _ceiling_text(y: np.ndarray, s: np.ndarray) -> str:
    if not ((s <= 0) & (y == 1)).any():
        return ""
    return (f" (the highest AUROC reachable while they stay at 0, with every other positive above every negative: "
            f"{auroc_ceiling(y, s):.3f})")


def artifact_bench(d: Path, rows: list, times: dict) -> None:
    df = pd.read_csv(d / "isic2017_artifacts" / "labels.csv")
    grids = [image_to_grid(load_rgb(d / "isic2017_artifacts" / p), SPEC) for p in df["image"]]
    for name, col in ARTIFACTS.items():
        s, present = [], []
        for g in grids:
            t = time.perf_counter()
            r = run(name, g)
            times.setdefault(name, []).append(time.perf_counter() - t)
            s.append(r.score)
            present.append(bool(r.present))
        s = np.nan_to_num(np.array(s, float), nan=-1.0)
        y = df[col].to_numpy().astype(int)
        a = auroc(y, s)
        lo, hi = boot_ci(y, s)
        pr = np.array(present)
        rows.append((f"{name} detector vs Bissoto labels", "isic2017_artifacts", len(y),
                     f"AUROC {a:.3f} [95% CI {lo:.2f}–{hi:.2f}] (pos {int(y.sum())}); at its default threshold: "
                     f"sensitivity {int((pr & (y == 1)).sum())}/{int(y.sum())}, specificity "
                     f"{int((~pr & (y == 0)).sum())}/{int((y == 0).sum())}; positives scoring 0: "
                     f"{int(((s <= 0) & (y == 1)).sum())}{_ceiling_text(y, s)}", "≥ 0.85", a >= 0.85))


def ham_artifact_bench(d: Path, rows: list, n_random: int = 200) -> None:
    """Held-out checks on HAM10000 (not used to design the detectors): ink vs the "marking" images of
    ham10000_artefact_ids (those present in ham10000_224) against its ruler/bubble images and against a seeded
    random sample of other images (AUROC), the flag rates of ink and patches on the marking images and on the
    random sample (patches must not take the marks for stickers), and the flag rate of dark_corners on the random
    sample (flagged ids listed; HAM10000 carries hardly any stickers)."""
    lab = d / "ham10000_artefact_ids" / "artefact_image_labels.csv"
    ham = d / "ham10000_224" / "labels.csv"
    if not (lab.exists() and ham.exists()):
        return
    art = pd.read_csv(lab)
    df = pd.read_csv(ham).set_index("image_id")
    art = art[art["image_id"].isin(df.index)]
    others = df.drop(index=art["image_id"]).sample(n=n_random, random_state=0)
    grid = lambda i: image_to_grid(load_rgb(d / "ham10000_224" / df.loc[i, "image"]), SPEC)  # noqa: E731
    mark = (art["artefact_classes"] == "marking").to_numpy()
    res_art = [[run(k, g) for k in ("ink", "patches")] for g in (grid(i) for i in art["image_id"])]
    ink_art = np.array([r[0].score for r in res_art])
    rnd = [run(k, grid(i)) for i in others.index for k in ("ink", "dark_corners", "patches")]
    ink_rnd = np.array([r.score for r in rnd[0::3]])
    for what, neg in (("ruler + bubble", ink_art[~mark]), (f"{n_random} random other", ink_rnd)):
        y = np.r_[np.ones(mark.sum()), np.zeros(len(neg))].astype(int)
        s = np.r_[ink_art[mark], neg]
        lo, hi = boot_ci(y, s)
        rows.append((f"ink detector: HAM10000 marking vs {what} images", "ham10000_224 + artefact ids",
                     len(y), f"AUROC {auroc(y, s):.3f} [95% CI {lo:.2f}–{hi:.2f}] (pos {int(y.sum())})",
                     "(held out)", None))
    for j, name in enumerate(("ink", "patches")):
        on_mark = [r[j].present for r, m in zip(res_art, mark) if m]
        on_rnd = [r.present for r in rnd[(0, 2)[j]::3]]
        rows.append((f"{name} flag rate: HAM10000 marking / random other images", "ham10000_224 + artefact ids",
                     len(on_mark) + len(on_rnd), f"marking {rate(on_mark)}; random {rate(on_rnd)}",
                     "(held out)", None))
    for name, res in (("dark_corners", rnd[1::3]), ("patches", rnd[2::3])):
        flagged = [i for i, r in zip(others.index, res) if r.present]
        rows.append((f"{name} flagged on random HAM10000 images", "ham10000_224", n_random,
                     f"{len(flagged)} flagged: {', '.join(flagged) or 'none'}", "(check by eye)", None))


def rate(flags) -> str:
    """'k/n = p [95% CI lo–hi]' (Wilson)."""
    f = np.asarray(flags, bool)
    e = proportion_ci(int(f.sum()), len(f))
    return f"{int(f.sum())}/{len(f)} = {e.value:.3f} [{e.lo:.2f}–{e.hi:.2f}]"


SYNTH_WIDTHS = (6, 10, 14, 20)  # stroke width (dot diameter) in px at 224 (×450/224 at full resolution)
SYNTH_RES = (96, 128, 224, "full")


def _unlabelled(d: Path, df: pd.DataFrame) -> pd.DataFrame:
    """The rows of `df` not listed in ham10000_artefact_ids: real markings (and rulers, bubbles) are no clean
    negatives."""
    lab = d / "ham10000_artefact_ids" / "artefact_image_labels.csv"
    return df[~df["image_id"].isin(pd.read_csv(lab)["image_id"])] if lab.exists() else df


def synth_cases(d: Path, n: int, res, seed: int = 0):
    """Yield (grid with stroke, grid without, stroke mask on the grid, (width at 224, colour, shape drawn)) for `n`
    seeded HAM10000 images at resolution `res` (96 / 128 / 224: drawn on ham10000_224 at 224 px, then brought
    to the grid as the audit does; "full": drawn on the 600×450 originals of ham10000_sample, centre-cropped
    to 450×450, and evaluated there without resampling). Images listed in ham10000_artefact_ids are left out. Width, colour and shape cycle through
    SYNTH_WIDTHS × COLOURS × SHAPES."""
    rng = np.random.default_rng(seed)
    combos = [(w, c, sh) for w in SYNTH_WIDTHS for c in COLOURS for sh in SHAPES]
    if res == "full":
        folder = d / "ham10000_sample"
        df = _unlabelled(d, pd.read_csv(folder / "labels.csv"))
        df = df.sample(n=min(n, len(df)), random_state=seed)
        scale = 450 / 224
    else:
        folder = d / "ham10000_224"
        df = _unlabelled(d, pd.read_csv(folder / "labels.csv")).sample(n=n, random_state=seed)
        scale = 1.0
    for k, r in enumerate(df.itertuples()):
        img = load_rgb(folder / r.image)
        les = read_mask_file(folder / r.mask) > 127
        if les.shape != img.shape[:2]:
            raise ValueError(f"{folder / r.mask}: mask {les.shape} does not match the image {img.shape[:2]}")
        if res == "full":
            h, w_ = img.shape[:2]
            s_ = min(h, w_)
            y0, x0 = (h - s_) // 2, (w_ - s_) // 2
            img, les = img[y0:y0 + s_, x0:x0 + s_], les[y0:y0 + s_, x0:x0 + s_]
        w, c, sh = combos[k % len(combos)]
        st = draw_stroke(img, les, rng, w * scale, c, sh)
        if res == "full":
            yield st.image, img, st.mask, (w, c, st.shape)
        else:
            spec = InputSpec(size=int(res), resize="stretch")
            yield (image_to_grid(st.image, spec), image_to_grid(img, spec),
                   mask_to_grid(st.mask, spec), (w, c, st.shape))


def synth_bench(d: Path, rows: list, n: int = 96) -> None:
    """ink and patches on synthetic surgical-marker strokes (see `synth_cases`), per resolution, then per colour,
    shape and width pooled over the resolutions."""
    if not (d / "ham10000_224" / "labels.csv").exists():
        return
    allrec = []
    for res in SYNTH_RES:
        if res == "full" and not (d / "ham10000_sample" / "labels.csv").exists():
            continue
        rec = []
        for g1, g0, m, (w, c, sh) in synth_cases(d, n, res):
            i1, i0 = run("ink", g1), run("ink", g0)
            p1, p0 = run("patches", g1), run("patches", g0)
            cov = float((i1.mask & m).sum() / max(m.sum(), 1)) if i1.mask is not None else 0.0
            rec.append((res, w, c, sh, i1.present, i0.present, p1.present, p0.present, cov))
        allrec += rec
        df = pd.DataFrame(rec, columns=["res", "w", "c", "sh", "ink1", "ink0", "pat1", "pat0", "cov"])
        met = df.ink1.mean() >= 0.8 and df.ink0.mean() <= 0.05 and df.pat1.mean() <= 0.10
        side = "450×450 crop of the 600×450 originals" if res == "full" else f"{res} px"
        rows.append((f"ink / patches on synthetic marker strokes ({side})",
                     "ham10000_sample" if res == "full" else "ham10000_224", len(df),
                     f"ink on inked {rate(df.ink1)}, on the same images clean {rate(df.ink0)}; patches on inked "
                     f"{rate(df.pat1)}, clean {rate(df.pat0)}; stroke pixels inside the ink mask: median "
                     f"{df['cov'].median():.2f}", "ink ≥ 0.80 / ≤ 0.05, patches ≤ 0.10", bool(met)))
    if not allrec:
        return
    df = pd.DataFrame(allrec, columns=["res", "w", "c", "sh", "ink1", "ink0", "pat1", "pat0", "cov"])
    for col, what in (("c", "colour"), ("sh", "shape drawn"), ("w", "width at 224 px")):
        parts = [f"{k}: {int(g.ink1.sum())}/{len(g)} (patches {int(g.pat1.sum())})" for k, g in df.groupby(col)]
        rows.append((f"ink detection on synthetic strokes by {what} (all resolutions)", "ham10000 + synth_ink",
                     len(df), "; ".join(parts), "(extra)", None))


def heldout_bench(rows: list) -> None:
    """The dermoscopy detectors on the held-out ISIC 2017 set built by `isic_heldout.py` (folder in
    AUDIT_ISIC_HELDOUT; skipped when unset): AUROC vs Bissoto's labels with a bootstrap CI, the same on the
    check half (a seeded random half that no design choice looked at: dark_corners' constants were chosen on
    the other half), and sensitivity / specificity at each detector's default threshold."""
    env = os.environ.get("AUDIT_ISIC_HELDOUT")
    if not env or not (Path(env) / "labels.csv").exists():
        return
    df = pd.read_csv(Path(env) / "labels.csv")
    check = ~(np.random.default_rng(0).random(len(df)) < 0.5)
    res = [[(r.score, bool(r.present)) for r in (run(name, g) for name in ARTIFACTS)]
           for g in (image_to_grid(load_rgb(p), SPEC) for p in df["image"])]
    for j, (name, col) in enumerate(ARTIFACTS.items()):
        col = col.replace("bissoto_", "")
        y = df[col].to_numpy().astype(int)
        s = np.nan_to_num(np.array([r[j][0] for r in res], float), nan=-1.0)
        pr = np.array([r[j][1] for r in res])
        lo, hi = boot_ci(y, s)
        a = auroc(y, s)
        rows.append((f"{name} detector vs Bissoto labels, held out", "ISIC 2017 at 256 px (see notes)", len(y),
                     f"AUROC {a:.3f} [95% CI {lo:.2f}–{hi:.2f}] (pos {int(y.sum())}); check half AUROC "
                     f"{auroc(y[check], s[check]):.3f} (n {int(check.sum())}); at its default threshold: sensitivity "
                     f"{(pr & (y == 1)).sum() / max(y.sum(), 1):.2f}, specificity "
                     f"{(~pr & (y == 0)).sum() / max((y == 0).sum(), 1):.2f}", "(held out)", None))


def _fonts() -> list[str]:
    cands = ["/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
             "/usr/share/fonts/truetype/dejavu/DejaVuSerif-Bold.ttf",
             "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"]
    return [c for c in cands if Path(c).exists()]


def stamp(g: np.ndarray, rng: np.random.Generator, fonts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stamp one marker on a 224 grid image; returns (image, bool glyph mask)."""
    n = g.shape[0]
    text = rng.choice(["L", "R", "PORTABLE", "AP", "SUPINE", "A", "B", "c", "CXR SCORE: 7", "→", "12"])
    size = int(rng.integers(9, 22))
    try:
        font = ImageFont.truetype(str(rng.choice(fonts)), size) if fonts else ImageFont.load_default(size=size)
    except Exception:
        font = ImageFont.load_default()
    canvas = Image.new("L", (n, n), 0)
    dr = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = dr.textbbox((0, 0), text, font=font)
    tw, th = x1 - x0, y1 - y0
    margin = 3
    if rng.random() < 0.75:  # near the border
        side = rng.integers(4)
        band = int(0.15 * n)
        if side in (0, 1):
            y = int(rng.integers(margin, max(margin + 1, band - th))) if side == 0 else int(
                rng.integers(max(0, n - band), max(n - band + 1, n - th - margin)))
            x = int(rng.integers(margin, max(margin + 1, n - tw - margin)))
        else:
            x = int(rng.integers(margin, max(margin + 1, band - tw))) if side == 2 else int(
                rng.integers(max(0, n - band), max(n - band + 1, n - tw - margin)))
            y = int(rng.integers(margin, max(margin + 1, n - th - margin)))
    else:
        x = int(rng.integers(margin, max(margin + 1, n - tw - margin)))
        y = int(rng.integers(margin, max(margin + 1, n - th - margin)))
    dr.text((x - x0, y - y0), text, fill=255, font=font)
    glyph = np.asarray(canvas) > 127
    out = g.astype(np.float32).copy()
    pol = rng.integers(3)
    if pol == 0:  # white text
        out[glyph] = 245
    elif pol == 1:  # black text
        out[glyph] = 10
    else:  # black text on a white box
        box = np.zeros_like(glyph)
        box[max(0, y - 2):y + th + 2, max(0, x - 2):x + tw + 2] = True
        out[box] = 240
        out[glyph] = 15
    aa = np.asarray(canvas, dtype=np.float32)[..., None] / 255.0  # keep anti-aliasing
    out = np.where((aa > 0) & (aa < 1), out * aa + g * (1 - aa), out) if pol != 2 else out
    return out.clip(0, 255).astype(np.uint8), glyph


def text_bench(cases: list, rows: list, times: dict) -> None:
    rng = np.random.default_rng(0)
    fonts = _fonts()
    hits, fp = [], []
    pos_scores, neg_scores = [], []
    for g, lung in cases:
        t = time.perf_counter()
        r0 = run("text", g)
        times.setdefault("text", []).append(time.perf_counter() - t)
        fp.append(float((r0.mask & lung).sum() / lung.sum()) if r0.mask is not None else 0.0)
        neg_scores.append(r0.score)
        for _ in range(2):
            gs, glyph = stamp(g, rng, fonts)
            r = run("text", gs)
            cov = float((r.mask & glyph).sum() / max(glyph.sum(), 1)) if r.mask is not None else 0.0
            hits.append(cov >= 0.5)
            pos_scores.append(r.score)
    rows.append(("text detector: recall on stamped markers (≥ 50 % of glyph marked)", "cxr_covid_v7 + stamps",
                 len(hits), f"recall {np.mean(hits):.3f}", "(no target)", None))
    rows.append(("text detector: share of human lung mask marked (unstamped)", "cxr_covid_v7", len(fp),
                 f"mean {np.mean(fp):.4f}, median {np.median(fp):.4f}, p90 {np.percentile(fp, 90):.4f}",
                 "(lower is better)", None))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 instead of 500 ham10000_224 images, 48 instead of 96 synthetic strokes per resolution")
    args = ap.parse_args()
    d = data_dir()
    if not d.is_dir():
        print(f"masks_quality: shared data not found at {d} (set AUDIT_SHARED_DATA); nothing to do.")
        return 0
    warnings.simplefilter("ignore")
    rows: list = []
    times: dict = {}
    lesion_bench(d, 100 if args.quick else 500, rows, times)
    cases = lung_bench(d, rows, times)
    artifact_bench(d, rows, times)
    ham_artifact_bench(d, rows)
    synth_bench(d, rows, 48 if args.quick else 96)
    heldout_bench(rows)
    text_bench(cases, rows, times)
    for name, ts in times.items():
        ms = 1000 * np.array(ts)
        rows.append((f"time: {name}", "224 px, one core", len(ts), f"median {np.median(ms):.1f} ms, "
                     f"p95 {np.percentile(ms, 95):.1f} ms", "≤ 50 ms", float(np.median(ms)) <= 50))
    head = "| what | data | n | result | target | met |\n|---|---|---|---|---|---|"
    lines = [head] + [f"| {a} | {b} | {n} | {r} | {t} | {'' if m is None else ('yes' if m else '**no**')} |"
                      for a, b, n, r, t, m in rows]
    table = "\n".join(lines)
    print(table)
    out = ROOT / "benchmarks" / "results" / "masks_quality.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = (("AUDIT_ISIC_HELDOUT=<folder from benchmarks/isic_heldout.py> " if os.environ.get("AUDIT_ISIC_HELDOUT")
            else "") + "python benchmarks/masks_quality.py" + (" --quick" if args.quick else ""))
    out.write_text(f"# masks/ detector quality on real data\n\nGenerated by `{cmd}`; everything on the 224-px "
                   "model grid (resize=stretch).\n\n"
                   + table + "\n\n" + NOTES, encoding="utf-8")
    readme = ROOT / "docs" / "regions.md"
    s = readme.read_text(encoding="utf-8")
    a, b = "<!-- masks-benchmark:start -->", "<!-- masks-benchmark:end -->"
    if a in s and b in s:
        readme.write_text(s[: s.index(a) + len(a)] + f"\n\nCommand: `{cmd}`.\n\n" + table + "\n\n" + s[s.index(b):],
                          encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
