"""Shortcut discovery without region masks: explanation clusters (SpRAy) and error-aware slices (Domino).

Region masks find only the shortcuts someone thought of. This module reads a finished audit (`per_image.csv` +
`cams.npz` in its out_dir) and looks for groups of images that the model treats alike, then describes and ranks
them by how suspicious they are.

Two groupings, both seeded:

* **Explanation clusters** (SpRAy, Lapuschkin et al. 2019, *Nat. Commun.* 10:1096). Each raw Grad-CAM map at the
  layer's resolution (h×w) is divided by its sum (unit mass: *where* the model looks, not how strongly; all-zero
  maps are excluded, get cluster −1 and are counted). Per predicted class the flattened maps are clustered with
  spectral clustering (`sklearn.cluster.SpectralClustering` on a precomputed RBF affinity of the maps with local
  scaling, Zelnik-Manor & Perona 2004: W_ij = exp(−‖x_i − x_j‖² / σ_i σ_j), σ_i the distance to the 7th
  neighbour; an RBF with one global width has no good width for maps whose distances are all small). The number of clusters is the eigengap
  heuristic on the symmetric normalised Laplacian L = I − D^−½ W D^−½ (k = argmax_k λ_{k+1} − λ_k, 1 ≤ k ≤ 8,
  k ≤ n / min_n) unless `k` is given. A class with fewer than 2·min_n maps stays one cluster.
* **Error-aware slices** (in the spirit of Domino, Eyuboglu et al., ICLR 2022). A Gaussian mixture
  (`sklearn.mixture.GaussianMixture`, diagonal covariance, `n_slices` components, seeded, 3 initialisations)
  over the concatenation [PCA-reduced embeddings | γ · one-hot label | γ · predicted probabilities]. The embedding is the pooled target-layer activation stored in cams.npz, z-scored per unit,
  reduced by PCA to ≤ 16 components and divided by one common scale (root-mean-square 1, components keep their
  relative variance). With a diagonal covariance the likelihood is invariant to rescaling a column, so γ acts
  through the variance floor `reg_covar` = 0.01: a label or probability column that differs by γ between two
  images costs up to γ²/(2·0.01) nats in a slice pure in that column. γ = 0.5 by default (12.5 nats): slices lean
  strongly towards one label and one predicted class, so that groups where the model fails come out as slices
  even when their CAMs look alike, while the embedding still shapes them (with γ ≥ 1 the slices become pure
  label × prediction cells, and the scattered errors of a well-served population, a slice of accuracy 0 by
  construction, outrank a coherent failing group). `n_slices` is capped at N // min_n.

Per group (cluster or slice): size; accuracy (Wilson 95 % CI) and the accuracy of the rest; the gap
Δ(S) = acc(S) − acc(rest) with Newcombe's hybrid-score 95 % CI (Newcombe 1998, *Stat. Med.* 17:873, method 10);
mean confidence; label and prediction mix; the mean unit-mass CAM (a PNG under `discover/`); the mean share of the
evidence on each known region (`frac_<region>`, NaN-aware) and mean artifact lift; the attributes it
over-represents (present_<region> flags, 0/1 metadata columns, each level of categorical metadata columns):
odds ratio (Haldane–Anscombe +0.5 when a cell is 0) with a one-sided Fisher exact test and Benjamini–Hochberg
q-values over all tests of the run; prototypes (the image_ids nearest the group's centre); a sentence.

Suspicion (higher = more suspicious, in [0, 1]) combines two independent lines of evidence as a noisy OR,
1 − (1 − gap) · (1 − where): how the model *performs* on the group (``gap``) and where its evidence *lies*
(``where`` = the largest of ``off_target``, ``artifact`` and ``location``; these three read the same maps and
largely agree, so they are not added up). One strong line is enough; a group that fails *and* whose maps share an
off-target spot outranks one that only fails as badly (a failing group whose maps share a spot points at a cause,
a failing group with diffuse maps at hard cases). `reason` names the largest part (with the region, e.g.
``artifact:ruler``). The parts, each in [0, 1]:

* ``gap``: −hi(Δ), the accuracy lost relative to the rest by the *upper* end of the CI of Δ, when that CI lies
  wholly below 0 (a group reliably worse than the rest); else 0.
* ``off_target``: acc(S) · clip(1 − tgt(S) / median_tgt, 0, 1) for each target region, where tgt(S) is the
  group's mean target fraction and median_tgt the dataset median: a group the model gets right with its evidence
  off the target (largest over target regions).
* ``artifact``: acc(S) · clip(1 − 1 / lift(S), 0, 1) for each artifact region, lift(S) the group's mean lift
  (1 = a uniform map; 2 → 0.5; 5 → 0.8): a group the model gets right while looking at an artifact.
* ``location``: concentration × off-centre distance of the group's mean map, with concentration =
  (share of the mass in the top 10 % of cells − 0.1) / 0.9 (0 for a uniform map, 1 for a single cell) and
  off-centre distance = E_map[‖cell − centre‖] / half-diagonal (≈ 0.54 for a uniform map). A tight spot in a
  corner scores high; a diffuse map or a centred one low. This needs no masks.

A ranked group is **flagged** when its accuracy is reliably worse than the rest's (the gap part > 0: the whole
95 % CI of Δ lies below 0) or when its evidence lies clearly off target (``where`` ≥ 0.5); `flag` says which
(``worse``, ``off-target`` or both). No correction for the number of groups is made: with 16 groups, about 0.4 are
expected to be flagged ``worse`` by chance (one-sided 2.5 % each); read the size of the gap, not only the flag.

Clusters and slices are ranked separately (`rank` = 1 is the most suspicious of its kind): an error-aware slice
gathers errors by construction, so its gap is not comparable with a cluster's. `ranking` lists both kinds by
suspicion. Groups with n < min_n are reported but not ranked (too small): suspicion None, rank None.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import RunDirError, UndefinedMetricWarning
from .stats import proportion_ci

__all__ = ["DiscoverResult", "discover", "explanation_clusters", "error_slices", "eigengap_k", "group_report",
           "SUSPICION_PARTS"]

NAN = float("nan")
MAX_K = 8
KNN = 7
PCA_DIM = 16
REG_COVAR = 0.01
N_PROTOTYPES = 10
SUSPICION_PARTS = ("gap", "off_target", "artifact", "location")
FLAG_WHERE = 0.5  # `where` (the largest of off_target, artifact, location) at which a group is flagged off-target

# per_image.csv columns that are not metadata (produced by the pipeline or identify the image)
_NOT_META = {"image_id", "image", "mask", "label", "split", "pred", "confidence", "margin", "correct", "explained",
             "cam_sum", "cam_peak_share", "cam_entropy",
             "region_notes", "off_target_regions", "flag_high_conf_error", "flag_off_target", "path"}
_GENERATED_PREFIXES = ("p_", "logodds_", "frac_", "area_", "lift_", "hit_", "fraclayer_", "score_", "present_", "cf_",
                       "flip_", "counterfactual_")
_MAX_LEVELS = 20


@dataclass
class DiscoverResult:
    """What `discover` returns.

    summary: JSON-able dict for a `discover` section of summary.json (see `discover`).
    assignments: one row per image of per_image.csv: image_id, cluster (int, −1 = all-zero map, not clustered),
        slice (int, −1 = no embedding), as written to discover.csv.
    groups: one row per cluster and slice (kind, id, n, accuracy, gap, suspicion, rank, text, ...), ranked.
    out_dir: the audit folder that was read and written to.
    """

    summary: dict
    assignments: pd.DataFrame
    groups: pd.DataFrame
    out_dir: Path
    files: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# loading

def _load(out_dir: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None, str]:
    """per_image rows aligned with the cams.npz maps (N×h×w float64) and embeddings (N×K float32, or None)."""
    pi, cz = out_dir / "per_image.csv", out_dir / "cams.npz"
    for p in (pi, cz):
        if not p.exists():
            raise RunDirError(f"{p}: not found; run `cli.py audit` first (discover reads an audit's out_dir)")
    df = pd.read_csv(pi)
    for col in ("image_id", "label", "pred", "correct", "confidence"):
        if col not in df.columns:
            raise RunDirError(f"{pi}: column {col!r} missing; expected an audit's per_image.csv")
    with np.load(cz, allow_pickle=False) as z:
        ids = z["image_id"].astype(str)
        cams = np.asarray(z["cam"], dtype=np.float64)
        # float32 as stored: N×K embeddings are the largest array here (K = 1280 for EfficientNet-B0)
        emb = np.asarray(z["embedding"], dtype=np.float32) if "embedding" in z.files else None
        layer = str(z["layer"]) if "layer" in z.files else ""
    if cams.ndim != 3 or len(cams) != len(ids):
        raise RunDirError(f"{cz}: expected cam of shape N×h×w with one image_id per map, got {cams.shape}")
    pos = {k: i for i, k in enumerate(ids)}
    df["image_id"] = df["image_id"].astype(str)
    missing = [k for k in df["image_id"] if k not in pos]
    if missing:
        raise RunDirError(f"{cz}: no map for {len(missing)} image(s) of per_image.csv (e.g. {missing[0]!r}); "
                          "the two files come from different audits")
    order = np.array([pos[k] for k in df["image_id"]], dtype=int)
    cams = cams[order]
    if emb is not None and (emb.ndim != 2 or len(emb) != len(ids) or emb.shape[1] == 0):
        emb = None
    elif emb is not None:
        emb = emb[order]
    return df.reset_index(drop=True), cams, emb, layer


def _regions_of(out_dir: Path, df: pd.DataFrame, regions: dict | None) -> dict[str, str]:
    """{region: 'target' | 'artifact'}: given, else config.resolved.yaml's `regions`, else from the columns."""
    if regions is not None:
        return {str(k): str(v) for k, v in regions.items()}
    cr = out_dir / "config.resolved.yaml"
    if cr.exists():
        try:
            import yaml
            d = yaml.safe_load(cr.read_text()) or {}
            for key in ("regions", "resolved"):
                v = d.get(key)
                if isinstance(v, dict) and v and all(isinstance(x, str) for x in v.values()):
                    return dict(v)
                if isinstance(v, dict) and isinstance(v.get("regions"), dict):
                    r = v["regions"]
                    if r and all(isinstance(x, str) for x in r.values()):
                        return dict(r)
        except Exception:  # noqa: BLE001 - a malformed file only loses the region kinds; fall back to columns
            pass
    out = {}
    for c in df.columns:
        if c.startswith("frac_") and not c.startswith("frac_outside_"):
            r = c[len("frac_"):]
            out[r] = "target" if f"frac_outside_{r}" in df.columns else "artifact"
    return out


def _classes(df: pd.DataFrame) -> list[str]:
    cls = [c[2:] for c in df.columns if c.startswith("p_")]
    if not cls:
        cls = sorted(set(df["label"].astype(str)) | set(df["pred"].astype(str)))
    return cls


# ----------------------------------------------------------------------------------------------------------------
# explanation clustering

def unit_mass(cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N×(h·w) maps divided by their sum, N bool 'valid'): all-zero or non-finite maps are invalid (rows NaN)."""
    flat = np.asarray(cams, dtype=np.float64).reshape(len(cams), -1)
    flat = np.where(np.isfinite(flat), np.maximum(flat, 0.0), np.nan)
    tot = flat.sum(1)
    valid = np.isfinite(tot) & (tot > 0)
    out = np.full_like(flat, np.nan)
    out[valid] = flat[valid] / tot[valid, None]
    return out, valid


def self_tuning_affinity(x: np.ndarray, n_neighbors: int = 7) -> np.ndarray:
    """RBF affinity with local scaling (Zelnik-Manor & Perona 2004): W_ij = exp(−d_ij² / (σ_i σ_j)), σ_i the
    distance of x_i to its n_neighbors-th nearest neighbour; W_ii = 0. Scale-free, so its eigengap is meaningful
    for unit-mass maps whose distances are all small."""
    from scipy.spatial.distance import cdist
    d = cdist(x, x)
    kk = int(min(max(1, n_neighbors), len(x) - 1))
    sig = np.sort(d, axis=1)[:, kk]
    sig = np.where(sig > 0, sig, np.max(sig) if np.max(sig) > 0 else 1.0)
    w = np.exp(-(d ** 2) / (sig[:, None] * sig[None, :]))
    np.fill_diagonal(w, 0.0)
    return w


def eigengap_k(affinity: np.ndarray, k_max: int = MAX_K) -> tuple[int, list[float]]:
    """Number of clusters by the eigengap heuristic (von Luxburg 2007, §8.3) on L_sym = I − D^−½ W D^−½.

    affinity: n×n symmetric, ≥ 0. Returns (k, the smallest k_max+1 eigenvalues ascending); k maximises
    λ_{k+1} − λ_k over 1 ≤ k ≤ min(k_max, n − 1).
    """
    w = np.asarray(affinity, dtype=np.float64)
    n = len(w)
    if n < 3:
        return 1, []
    d = w.sum(1)
    inv = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    lap = np.eye(n) - inv[:, None] * w * inv[None, :]
    ev = np.sort(np.linalg.eigvalsh(0.5 * (lap + lap.T)))[: k_max + 1]
    kmax = min(k_max, n - 1, len(ev) - 1)
    if kmax < 1:
        return 1, ev.tolist()
    gaps = np.diff(ev[: kmax + 1])
    return int(np.argmax(gaps)) + 1, [float(v) for v in ev]


def explanation_clusters(maps: np.ndarray, pred: np.ndarray, k: int | None = None, seed: int = 0,
                         min_n: int = 10) -> tuple[np.ndarray, dict]:
    """SpRAy-style clusters of unit-mass maps (N×D, NaN rows = excluded) per predicted class.

    Returns (labels N int, −1 for excluded maps; {class: {"n", "k", "chosen", "eigenvalues"}}). Cluster ids are
    global (0, 1, ... over the classes in sorted order).
    """
    from sklearn.cluster import SpectralClustering
    labels = np.full(len(maps), -1, dtype=int)
    info: dict[str, dict] = {}
    nxt = 0
    valid = np.isfinite(maps).all(1)
    for c in sorted(pd.unique(pred[valid]).tolist(), key=str):
        idx = np.flatnonzero(valid & (pred == c))
        n = len(idx)
        entry: dict[str, Any] = {"n": int(n)}
        if n < 2 * min_n or n < 4:
            kk, entry["chosen"], entry["eigenvalues"] = 1, f"one cluster (n < 2·min_n = {2 * min_n})", []
        else:
            x = maps[idx]
            aff = self_tuning_affinity(x, KNN)
            kg, ev = eigengap_k(aff, MAX_K)
            entry["eigenvalues"] = [round(v, 5) for v in ev]
            if k is not None:
                kk, entry["chosen"] = int(k), "given"
            else:
                kk, entry["chosen"] = kg, "eigengap"
            kk = max(1, min(kk, n - 1) if k is not None else min(kk, n // min_n, MAX_K))
            if kk > 1:
                sc = SpectralClustering(n_clusters=kk, affinity="precomputed", random_state=seed,
                                        assign_labels="kmeans", n_init=10)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # "graph is not fully connected": fine for k ≥ 2
                    lab = sc.fit_predict(aff)
            else:
                lab = np.zeros(n, dtype=int)
        if kk == 1:
            lab = np.zeros(n, dtype=int)
        # renumber by size (largest first) so ids are stable across runs with the same data
        uniq, counts = np.unique(lab, return_counts=True)
        order = uniq[np.lexsort((uniq, -counts))]
        remap = {int(u): nxt + j for j, u in enumerate(order)}
        labels[idx] = [remap[int(v)] for v in lab]
        nxt += len(order)
        entry["k"] = int(len(order))
        info[str(c)] = entry
    return labels, info


# ----------------------------------------------------------------------------------------------------------------
# error-aware slices

def error_slices(emb: np.ndarray, labels_onehot: np.ndarray, probs: np.ndarray, n_slices: int = 8,
                 gamma: float = 0.5, seed: int = 0, min_n: int = 10) -> tuple[np.ndarray, np.ndarray, dict]:
    """Domino-style slices: a diagonal Gaussian mixture over [PCA(z(emb)) | γ·onehot(y) | γ·p̂].

    emb: N×K; labels_onehot: N×C (zero rows for unknown labels); probs: N×C. Returns (slice N int, the feature
    matrix N×F used, {"n_slices", "gamma", "pca_components", "explained_variance", "reg_covar", ...}).
    """
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture
    n = len(emb)
    e = np.nan_to_num(np.asarray(emb, dtype=np.float32))  # float32: halves the largest copies; PCA keeps it
    sd = e.std(0)
    z = (e - e.mean(0)) / np.where(sd > 0, sd, 1.0)
    d = max(1, min(PCA_DIM, z.shape[1], n - 1))
    pca = PCA(n_components=d, random_state=seed)
    zp = pca.fit_transform(z)
    s2 = float(np.sqrt((zp ** 2).mean()))  # one common scale: components keep their relative variance
    zp = zp / (s2 if s2 > 0 else 1.0)
    feats = np.hstack([zp, gamma * labels_onehot, gamma * np.nan_to_num(probs)])
    k = int(max(1, min(n_slices, n // max(min_n, 1), n)))
    gm = GaussianMixture(n_components=k, covariance_type="diag", reg_covar=REG_COVAR, n_init=3,
                         random_state=seed, max_iter=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on tiny sets; the assignment is still usable
        gm.fit(feats)
        lab = gm.predict(feats)
    uniq, counts = np.unique(lab, return_counts=True)
    order = uniq[np.lexsort((uniq, -counts))]
    remap = {int(u): j for j, u in enumerate(order)}
    lab = np.array([remap[int(v)] for v in lab], dtype=int)
    info = {"n_slices": int(len(order)), "n_slices_requested": int(n_slices), "gamma": float(gamma),
            "pca_components": int(d), "explained_variance": round(float(pca.explained_variance_ratio_.sum()), 4),
            "reg_covar": REG_COVAR, "converged": bool(gm.converged_)}
    return lab, feats, info


# ----------------------------------------------------------------------------------------------------------------
# describing a group

def _newcombe(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float, float]:
    """Δ = k1/n1 − k2/n2 with Newcombe's hybrid score CI from the two Wilson intervals."""
    if n1 == 0 or n2 == 0:
        return NAN, NAN, NAN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        a, b = proportion_ci(k1, n1), proportion_ci(k2, n2)
    d = a.value - b.value
    lo = d - math.sqrt((a.value - a.lo) ** 2 + (b.hi - b.value) ** 2)
    hi = d + math.sqrt((a.hi - a.value) ** 2 + (b.value - b.lo) ** 2)
    return d, lo, hi


def _est(e) -> dict:
    d = e.to_dict()
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _f(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(round(float(x), 4))


def map_shape_stats(m: np.ndarray) -> dict:
    """Concentration, off-centre distance and peak (row, col) of a unit-mass h×w map (see module docstring)."""
    h, w = m.shape
    flat = m.ravel()
    if not np.isfinite(flat).all() or flat.sum() <= 0:
        return {"concentration": None, "off_centre": None, "peak": None}
    flat = flat / flat.sum()
    top = max(1, int(math.ceil(0.1 * flat.size)))
    share = float(np.sort(flat)[::-1][:top].sum())
    base = top / flat.size
    conc = (share - base) / (1 - base) if base < 1 else 0.0
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    r = np.sqrt(((yy - cy) / max(h, 1)) ** 2 + ((xx - cx) / max(w, 1)) ** 2)
    rmax = math.sqrt(((h - 1) / 2 / h) ** 2 + ((w - 1) / 2 / w) ** 2) or 1.0
    off = float((m / m.sum() * r).sum() / rmax)
    pk = np.unravel_index(int(np.argmax(m)), m.shape)
    return {"concentration": float(np.clip(conc, 0, 1)), "off_centre": float(np.clip(off, 0, 1)),
            "top10_share": share, "peak": [int(pk[0]), int(pk[1])]}


def _attributes(df: pd.DataFrame) -> list[tuple[str, str | None, np.ndarray]]:
    """Candidate attributes as (column, level or None, N bool 'has it', N bool 'known'): present_<region> flags,
    0/1 or bool metadata columns, and each level of a non-numeric column with 2–20 levels."""
    out = []
    for c in df.columns:
        if c in _NOT_META or any(c.startswith(p) for p in _GENERATED_PREFIXES if p != "present_"):
            continue
        s = df[c]
        known = s.notna().to_numpy()
        if known.sum() < 2:
            continue
        vals = s[known]
        if vals.dtype == bool or set(pd.unique(vals)).issubset({0, 1, True, False, 0.0, 1.0}):
            v = np.zeros(len(s), bool)
            v[known] = vals.astype(float).to_numpy() == 1
            if 0 < v[known].sum() < known.sum():
                out.append((c, None, v, known))
        elif not pd.api.types.is_numeric_dtype(vals):
            levels = pd.unique(vals.astype(str))
            if 2 <= len(levels) <= _MAX_LEVELS:
                sv = s.astype(str).to_numpy()
                for lv in sorted(levels):
                    out.append((c, str(lv), (sv == lv) & known, known))
    return out


def _odds_tests(in_g: np.ndarray, attrs) -> list[dict]:
    from scipy.stats import fisher_exact
    rows = []
    for col, lvl, has, known in attrs:
        g, r = in_g & known, ~in_g & known
        a, b = int((has & g).sum()), int((~has & g).sum())
        c, d = int((has & r).sum()), int((~has & r).sum())
        if a + b == 0 or c + d == 0:
            continue
        orr = (a * d) / (b * c) if min(a, b, c, d) > 0 else ((a + .5) * (d + .5)) / ((b + .5) * (c + .5))
        p = float(fisher_exact([[a, b], [c, d]], alternative="greater")[1])
        rows.append({"attribute": col, "level": lvl, "share_in": a / (a + b), "share_out": c / (c + d),
                     "n_in": a, "odds_ratio": float(orr), "p": p})
    return rows


def _save_png(m: np.ndarray, path: Path) -> None:
    """Min-maxed (display only) mean map as a small heat-map PNG, 112 px on the long side, bilinear."""
    from matplotlib import colormaps
    from PIL import Image
    v = np.nan_to_num(m.astype(np.float64))
    v = (v - v.min()) / (v.max() - v.min() + 1e-12)
    rgb = (colormaps["inferno"](v)[..., :3] * 255).astype(np.uint8)
    h, w = v.shape
    sc = 112 / max(h, w)
    img = Image.fromarray(rgb).resize((max(1, round(w * sc)), max(1, round(h * sc))), Image.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def group_report(kind: str, gid: int, in_g: np.ndarray, df: pd.DataFrame, maps: np.ndarray, hw: tuple[int, int],
                 regions: dict[str, str], attrs, centre_space: np.ndarray, min_n: int) -> dict:
    """The description of one group (see the module docstring); suspicion and words are added by the caller."""
    correct = df["correct"].astype(str).str.lower().isin(["true", "1"]).to_numpy()
    n, nr = int(in_g.sum()), int((~in_g).sum())
    k1, k2 = int(correct[in_g].sum()), int(correct[~in_g].sum())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        acc, acc_r = proportion_ci(k1, n), proportion_ci(k2, nr)
    d, lo, hi = _newcombe(k1, n, k2, nr)
    g = {"kind": kind, "id": int(gid), "n": n, "too_small": bool(n < min_n),
         "accuracy": _est(acc), "accuracy_rest": _est(acc_r),
         "gap": {"value": _f(d), "lo": _f(lo), "hi": _f(hi), "method": "Newcombe hybrid score (Wilson)"},
         "mean_confidence": _f(df["confidence"].to_numpy(float)[in_g].mean()) if n else None,
         "labels": {str(k): round(v, 4) for k, v in df.loc[in_g, "label"].astype(str).value_counts(normalize=True).items()},
         "preds": {str(k): round(v, 4) for k, v in df.loc[in_g, "pred"].astype(str).value_counts(normalize=True).items()}}
    ok = in_g & np.isfinite(maps).all(1)
    mean_map = maps[ok].mean(0).reshape(hw) if ok.any() else np.full(hw, np.nan)
    g["map"] = {"n_maps": int(ok.sum()), **map_shape_stats(mean_map)}
    ev, lift = {}, {}
    for r, kd in regions.items():
        if f"frac_{r}" in df:
            v = df.loc[in_g, f"frac_{r}"].to_numpy(float)
            ev[r] = _f(np.nanmean(v)) if np.isfinite(v).any() else None
        if f"lift_{r}" in df:
            v = df.loc[in_g, f"lift_{r}"].to_numpy(float)
            lift[r] = _f(np.nanmean(v)) if np.isfinite(v).any() else None
    g["evidence"], g["lift"] = ev, lift
    g["over_represented"] = _odds_tests(in_g, attrs)
    # prototypes: nearest the centre in the space the grouping was made in
    idx = np.flatnonzero(in_g & np.isfinite(centre_space).all(1))
    if len(idx):
        cen = centre_space[idx].mean(0)
        dist = ((centre_space[idx] - cen) ** 2).sum(1)
        g["prototypes"] = df["image_id"].to_numpy()[idx[np.argsort(dist, kind="stable")[:N_PROTOTYPES]]].tolist()
    else:
        g["prototypes"] = []
    g["_mean_map"] = mean_map
    return g


def suspicion(g: dict, regions: dict[str, str], median_target: dict[str, float]) -> tuple[float | None, str, dict]:
    """(score in [0, 1] or None when too small, the part that gave it, all parts); see the module docstring."""
    if g["too_small"]:
        return None, "too small", {}
    parts = dict.fromkeys(SUSPICION_PARTS, 0.0)
    hi = g["gap"]["hi"]
    if hi is not None and hi < 0:
        parts["gap"] = -hi
    acc = g["accuracy"]["value"] or 0.0
    which: dict[str, str] = {}
    for r, kd in regions.items():
        v = None
        if kd == "target":
            t, med = g["evidence"].get(r), median_target.get(r)
            if t is not None and med is not None and med > 0:
                v, part = acc * float(np.clip(1 - t / med, 0, 1)), "off_target"
        elif kd == "artifact":
            lf = g["lift"].get(r)
            if lf is not None and lf > 0:
                v, part = acc * float(np.clip(1 - 1 / lf, 0, 1)), "artifact"
        if v is not None and v > parts[part]:
            parts[part], which[part] = v, r
    c, o = g["map"].get("concentration"), g["map"].get("off_centre")
    if c is not None and o is not None:
        parts["location"] = c * o
    parts = {k: round(float(v), 4) for k, v in parts.items()}
    best = max(parts, key=lambda k: parts[k])
    reason = f"{best}:{which[best]}" if best in which else best
    score = 1.0 - (1.0 - parts["gap"]) * (1.0 - _where(parts))
    return score, reason, parts


def _where(parts: dict) -> float:
    """The evidence-location line of the suspicion: the largest of off_target, artifact and location."""
    return max(parts.get("off_target", 0.0), parts.get("artifact", 0.0), parts.get("location", 0.0))


def flag_of(parts: dict) -> str | None:
    """'worse', 'off-target', 'worse+off-target' or None for a ranked group's suspicion parts (module docstring)."""
    why = (["worse"] if parts.get("gap", 0.0) > 0 else []) + (["off-target"] if _where(parts) >= FLAG_WHERE else [])
    return "+".join(why) or None


def _words(g: dict) -> str:
    name = f"{g['kind']} {g['id']}" + (f" (predicted {g['pred_class']})" if g.get("pred_class") else "")
    acc, rest = g["accuracy"]["value"], g["accuracy_rest"]["value"]
    s = f"{name}: {g['n']} images"
    if g["too_small"]:
        return s + " (too small to rank)"
    if acc is not None:
        s += f", accuracy {acc:.2f}" + (f" vs {rest:.2f} elsewhere" if rest is not None else "")
        gp = g["gap"]
        if gp["lo"] is not None:
            s += f" (Δ {gp['value']:+.2f} [{gp['lo']:+.2f}, {gp['hi']:+.2f}])"
    if g["labels"]:
        top = max(g["labels"], key=g["labels"].get)
        s += f", {100 * g['labels'][top]:.0f}% labelled {top}"
    if g["preds"] and not g.get("pred_class"):
        top = max(g["preds"], key=g["preds"].get)
        s += f", {100 * g['preds'][top]:.0f}% predicted {top}"
    sig = [a for a in g["over_represented"] if a["odds_ratio"] > 1 and a.get("q", a["p"]) < 0.05]
    for a in sig[:2]:
        what = a["attribute"][len("present_"):] if a["attribute"].startswith("present_") else a["attribute"]
        what = f"{what}={a['level']}" if a["level"] is not None else what
        s += f", {100 * a['share_in']:.0f}% carry {what} (vs {100 * a['share_out']:.0f}% elsewhere)"
    ev = {r: v for r, v in g["evidence"].items() if v is not None}
    if ev:
        r = max(ev, key=ev.get)
        s += f", {100 * ev[r]:.0f}% of the evidence on {r}"
    m = g["map"]
    if m.get("concentration") is not None and g["suspicion_parts"].get("location", 0) >= 0.2:
        s += f", evidence concentrated ({100 * m['top10_share']:.0f}% in a tenth of the map) off centre"
    if g.get("suspicion") is not None:
        s += f"; suspicion {g['suspicion']:.2f} ({g['reason']})"
    if g.get("flag"):
        s += f" — FLAGGED ({g['flag']})"
    return s


def _bh(pvals: list[float]) -> list[float]:
    p = np.asarray(pvals, dtype=float)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p)
    q = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(q[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.clip(q, 0, 1)
    return out.tolist()


# ----------------------------------------------------------------------------------------------------------------
# the entry point

def discover(out_dir: Path | str, k: int | None = None, seed: int = 0, min_n: int = 10,
             regions: dict | None = None, n_slices: int = 8, gamma: float = 0.5,
             write: bool = True) -> DiscoverResult:
    """Explanation clusters and error-aware slices of an audit, described and ranked by suspicion.

    out_dir: an audit folder holding per_image.csv and cams.npz (`run_audit` writes both).
    k: clusters per predicted class (default: the eigengap heuristic, ≤ 8). seed: for spectral clustering's
    k-means and the mixture. min_n: groups smaller than this are described but not ranked; a class with fewer
    than 2·min_n maps is one cluster; n_slices is capped at N // min_n. regions: {name: "target"|"artifact"}
    (default: config.resolved.yaml's regions, else guessed from the frac_/frac_outside_ columns).
    n_slices, gamma: the mixture's size and the weight γ of the label and probability columns.
    write: write discover.csv, discover/groups.csv and discover/<kind>_<id>.png into out_dir.

    Returns a DiscoverResult whose `summary` is
      {"method": {...}, "n": N, "n_zero_cam": z, "min_n", "seed", "regions": {name: kind},
       "median_target_frac": {region: median}, "clusters": {"per_class": {cls: {n, k, chosen, eigenvalues}},
       "groups": [group, ...]}, "slices": {"n_slices", "gamma", "pca_components", "explained_variance", ...,
       "groups": [...]} (or {"skipped": reason}), "ranking": [{"kind", "id", "suspicion", "reason", "text"}, ...],
       "files": {...}}
    and each group is {"kind", "id", "pred_class" (clusters), "n", "too_small", "accuracy", "accuracy_rest" (Wilson
    Estimate dicts), "gap" {value, lo, hi, method}, "mean_confidence", "labels", "preds" ({class: share}),
    "map" {n_maps, concentration, off_centre, top10_share, peak, png}, "evidence" {region: mean frac}, "lift",
    "over_represented" [{attribute, level, share_in, share_out, n_in, odds_ratio, p, q}] (OR > 1, p < 0.05),
    "prototypes" [image_id], "suspicion", "reason", "suspicion_parts", "rank", "text"}.

    Raises RunDirError when the files are missing or do not match. Example::

        res = discover(Path("reports/run1"))
        print(res.summary["ranking"][0]["text"])
    """
    out_dir = Path(out_dir)
    if k is not None and (int(k) != k or k < 1):
        raise ValueError(f"k: expected a positive integer number of clusters or None (eigengap), got {k!r}")
    if min_n < 1:
        raise ValueError(f"min_n: expected a positive integer, got {min_n!r}")
    df, cams, emb, layer = _load(out_dir)
    n = len(df)
    if n == 0:
        raise RunDirError(f"{out_dir / 'per_image.csv'}: no rows to discover groups in")
    hw = tuple(int(v) for v in cams.shape[1:])
    regions = _regions_of(out_dir, df, regions)
    classes = _classes(df)
    maps, valid = unit_mass(cams)
    pred = df["pred"].astype(str).to_numpy()
    median_target = {}
    for r, kd in regions.items():
        if kd == "target" and f"frac_{r}" in df and np.isfinite(df[f"frac_{r}"].to_numpy(float)).any():
            median_target[r] = float(np.nanmedian(df[f"frac_{r}"].to_numpy(float)))
    attrs = _attributes(df)

    cl, cl_info = explanation_clusters(maps, pred, k=k, seed=seed, min_n=min_n)
    groups: list[dict] = []
    for cid in sorted(set(cl.tolist()) - {-1}):
        g = group_report("cluster", cid, cl == cid, df, maps, hw, regions, attrs, maps, min_n)
        g["pred_class"] = str(pred[cl == cid][0])
        groups.append(g)

    sl = np.full(n, -1, dtype=int)
    slice_info: dict[str, Any]
    if emb is None:
        slice_info = {"skipped": "cams.npz holds no embedding (audit written by an older version)"}
    elif n < 2 * min_n:
        slice_info = {"skipped": f"too few images (n = {n} < 2·min_n = {2 * min_n})"}
    else:
        onehot = np.zeros((n, len(classes)))
        lab = df["label"].astype(str).to_numpy()
        for j, c in enumerate(classes):
            onehot[lab == c, j] = 1.0
        probs = np.column_stack([df[f"p_{c}"].to_numpy(float) for c in classes]) \
            if all(f"p_{c}" in df for c in classes) else np.zeros((n, 0))
        sl, feats, slice_info = error_slices(emb, onehot, probs, n_slices=n_slices, gamma=gamma, seed=seed,
                                             min_n=min_n)
        for sid in sorted(set(sl.tolist())):
            groups.append(group_report("slice", sid, sl == sid, df, maps, hw, regions, attrs, feats,
                                       min_n))

    # multiple testing over every attribute test of the run; keep over-representation only
    allp = [(gi, ai) for gi, g in enumerate(groups) for ai in range(len(g["over_represented"]))]
    qs = _bh([groups[gi]["over_represented"][ai]["p"] for gi, ai in allp])
    for (gi, ai), q in zip(allp, qs):
        groups[gi]["over_represented"][ai]["q"] = q
    files: list[Path] = []
    for g in groups:
        tests = [a for a in g["over_represented"] if a["odds_ratio"] > 1 and a["p"] < 0.05]
        tests.sort(key=lambda a: (a["p"], -a["odds_ratio"]))
        g["over_represented"] = [{k2: (_f(v) if isinstance(v, float) else v) for k2, v in a.items()} for a in tests]
        s, reason, parts = suspicion(g, regions, median_target)
        g["suspicion"], g["reason"], g["suspicion_parts"] = (None if s is None else round(s, 4)), reason, parts
        g["flag"] = flag_of(parts) if s is not None else None
        mm = g.pop("_mean_map")
        png = Path("discover") / f"{g['kind']}_{g['id']}.png"
        if write and np.isfinite(mm).all():
            _save_png(mm, out_dir / png)
            files.append(out_dir / png)
            g["map"]["png"] = str(png)
        else:
            g["map"]["png"] = None
        g["text"] = _words(g)

    # ranked within each kind (an error-aware slice gathers errors by construction, so its gap is not comparable
    # with a cluster's); `ranking` lists both kinds by suspicion for convenience
    for kind in ("cluster", "slice"):
        kr = sorted([g for g in groups if g["kind"] == kind and g["suspicion"] is not None],
                    key=lambda g: (-g["suspicion"], g["id"]))
        for r, g in enumerate(kr, 1):
            g["rank"] = r
    for g in groups:
        g.setdefault("rank", None)
    ranked = sorted([g for g in groups if g["suspicion"] is not None],
                    key=lambda g: (-g["suspicion"], g["kind"], g["id"]))

    assignments = pd.DataFrame({"image_id": df["image_id"], "cluster": cl, "slice": sl})
    table = pd.DataFrame([{
        "kind": g["kind"], "id": g["id"], "pred_class": g.get("pred_class"), "n": g["n"], "too_small": g["too_small"],
        "accuracy": g["accuracy"]["value"], "accuracy_lo": g["accuracy"]["lo"], "accuracy_hi": g["accuracy"]["hi"],
        "accuracy_rest": g["accuracy_rest"]["value"], "gap": g["gap"]["value"], "gap_lo": g["gap"]["lo"],
        "gap_hi": g["gap"]["hi"], "mean_confidence": g["mean_confidence"], "suspicion": g["suspicion"],
        "reason": g["reason"], "flag": g.get("flag"), "rank": g["rank"],
        "prototypes": ";".join(map(str, g["prototypes"])), "text": g["text"]} for g in groups])
    if len(table):
        table = table.sort_values(["kind", "rank", "id"], na_position="last").reset_index(drop=True)
    if write:
        assignments.to_csv(out_dir / "discover.csv", index=False)
        (out_dir / "discover").mkdir(exist_ok=True)
        table.to_csv(out_dir / "discover" / "groups.csv", index=False)
        files += [out_dir / "discover.csv", out_dir / "discover" / "groups.csv"]

    summary = {
        "method": {
            "clusters": ("SpRAy-style (Lapuschkin et al. 2019): unit-mass Grad-CAM maps at layer resolution "
                         f"{hw[0]}×{hw[1]}, per predicted class, sklearn SpectralClustering on a "
                         f"self-tuning RBF affinity (local scaling, {KNN}th neighbour); k by the eigengap of the normalised Laplacian "
                         f"(k ≤ {MAX_K})" + (f"; k = {k} given" if k is not None else "")),
            "slices": ("Domino-style (Eyuboglu et al. 2022): diagonal GaussianMixture over [PCA(z-scored "
                       f"target-layer embedding) ≤ {PCA_DIM} components, one common scale | γ·one-hot label | "
                       f"γ·predicted probabilities], γ = {gamma}, reg_covar = {REG_COVAR}, seed {seed}"),
            "gap": "Δ = accuracy(group) − accuracy(rest), Newcombe hybrid-score 95% CI",
            "attributes": ("odds ratio (Haldane +0.5 on zero cells), one-sided Fisher exact p, Benjamini–Hochberg "
                           "q over all tests; listed when OR > 1 and p < 0.05"),
            "suspicion": ("1 − (1 − gap)(1 − where), where = max(off_target, artifact, location); gap = −upper "
                          "CI of Δ when the CI lies below 0; off_target = accuracy·(1 − target frac / dataset "
                          "median); artifact = accuracy·(1 − 1/lift); location = "
                          "concentration × off-centre distance of the mean map; groups with n < min_n unranked"),
            "flag": ("worse: the 95% CI of Δ lies below 0; off-target: max(off_target, artifact, location) ≥ "
                     f"{FLAG_WHERE}; no correction for the number of groups"),
        },
        "layer": layer, "n": int(n), "n_zero_cam": int((~valid).sum()), "min_n": int(min_n), "seed": int(seed),
        "regions": regions, "median_target_frac": {r: _f(v) for r, v in median_target.items()},
        "clusters": {"per_class": cl_info, "groups": [g for g in groups if g["kind"] == "cluster"]},
        "slices": {**slice_info, "groups": [g for g in groups if g["kind"] == "slice"]},
        "ranking": [{"kind": g["kind"], "id": g["id"], "rank": g["rank"], "n": g["n"], "suspicion": g["suspicion"],
                     "reason": g["reason"], "flag": g["flag"], "prototypes": g["prototypes"], "text": g["text"]}
                    for g in ranked],
        "files": {"assignments": "discover.csv", "groups": "discover/groups.csv", "maps": "discover/"} if write else {},
    }
    json.dumps(summary, allow_nan=True)  # fails loudly here, not in the caller, if something is not JSON-able
    return DiscoverResult(summary=summary, assignments=assignments, groups=table, out_dir=out_dir, files=files)


def record_in_summary(out_dir: Path, section: dict) -> dict | None:
    """Write a discover section into the audit folder's summary.json (`cli.py discover` and `audit.discover`
    after an audit); returns the updated summary, None when the folder holds no summary.json."""
    p = Path(out_dir) / "summary.json"
    if not p.is_file():
        return None
    s = json.loads(p.read_text())
    s["discover"] = section
    p.write_text(json.dumps(s, indent=2))
    return s
