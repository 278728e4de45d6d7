"""Dataset scan: artifact prevalence, label association and split leakage, before any model is trained.

`run_scan(preset, manifest, out_dir, spec, ...)` runs the preset's artifact regions (detectors such as ink,
ruler, dark_corners, text; `source: file` regions such as the V7 `device` mask) and optional 0/1 metadata
flag columns over every image, in DataLoader workers, and reports:

* prevalence of each artifact overall, per label and per `by` column group (Wilson 95 % CIs; groups with
  n < `min_n` are "too small": value and CI NaN, counts kept);
* association with the label: for each class vs the rest (a binary label: the positive / minority class vs the
  other) the odds ratio with Fisher's exact test (`scipy.stats.fisher_exact`, two-sided) and a Woolf logit
  95 % CI; when a cell of the 2×2 table is zero, 0.5 is added to every cell (Haldane–Anscombe) for the
  estimate and the CI. Over all classes: Pearson's χ² (no continuity correction) and Cramér's V,
  bias-corrected (Bergsma 2013; the plain sqrt(χ² / (n·(min(r, c) − 1))) is inflated by small groups) with a
  bootstrap CI, its p by Monte Carlo when the table is sparse. Associations are listed
  strongest first (the CI bound nearer OR = 1, on the log scale, then |log OR|), each also in words;
* split leakage: the same id (`id_col`, e.g. lesion_id / patient id) in more than one split, and near-duplicate
  images across splits: candidates by a 64-bit DCT perceptual hash (Hamming distance ≤ `phash_threshold`,
  default 6), confirmed by a 256-bit one (≤ `detail_threshold`, default 48): the 64-bit hash sees the layout
  only, and in dermoscopy many different lesions share one (a dark blob in the middle of skin);
* with `run_dir`: the model's accuracy and the positive class's sensitivity / specificity with vs without each
  artifact (Wilson CIs), and the mean P(positive) among negatives with vs without it (bootstrap CIs) — the
  analysis of Winkler et al. 2019, JAMA Dermatology 155(10):1135, where surgical-ink markings raised the
  melanoma probability a CNN gave to nevi.

Files written to `out_dir`: scan.csv (one row per readable image: detector scores `score_<a>`, flags
`present_<a>` True/False/empty = unknown, `phash` as 16 hex digits, `phash256` as 64, and model columns with `run_dir`),
scan.json (strict JSON, NaN → null, `schema_version`), contact_<artifact>.png (the top-scoring images per
artifact, the region outlined), near_duplicates.csv and leaking_ids.csv (when any), errors.csv (unreadable
images, skipped and counted); an interrupted scan leaves scan.partial.csv (the rows scanned until then).
`render_scan(result, console)` prints the rich tables.
"""
from __future__ import annotations

import heapq
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .errors import ConfigError, ManifestError, UndefinedMetricWarning
from .formats import format_by_label, format_record
from .preprocess import InputSpec, scale16_value
from .stats import Estimate, bootstrap_ci, group_keys, proportion_ci

__all__ = ["ScanResult", "run_scan", "render_scan", "prepare_scan", "scan_input_spec", "phash_images",
           "detail_hash_images", "hamming", "odds_ratio_2x2", "cramers_v", "SCHEMA_VERSION", "PHASH_BITS"]

SCHEMA_VERSION = 2       # 2: Cramér's `value` is bias-corrected (1: the plain V); near_duplicates lists confirmed pairs
PHASH_BITS = 64
PHASH_SIZE = 32          # grayscale side the DCT is taken on
PHASH_LOW = 8            # low-frequency block kept (8×8 = 64 bits)
DETAIL_BITS = 256        # the confirming hash: 16×16 lowest frequencies of a 64×64 grayscale image
DETAIL_SIZE = 64
DETAIL_LOW = 16
DETAIL_THRESHOLD = 48    # of 256 bits; benchmarks/near_duplicates.py measures why (docs/scan.md)
PAIR_SHEET_PAIRS = 16    # near-duplicate pairs drawn in near_duplicates.png
SCAN_KEYS = ("flag_cols", "by", "id_col", "min_n", "top_k")
MAX_JSON_PAIRS = 1000    # near-duplicate pairs / leaking ids listed in scan.json (all of them in the CSVs)
Progress = Callable[[int, int], None]
NAN = float("nan")


@dataclass
class ScanResult:
    """per_image: scan.csv's table. summary: scan.json's dict (strict-JSON values). out_dir: where files went.
    errors: (image_id, image, reason) of the skipped, unreadable images."""

    per_image: pd.DataFrame
    summary: dict
    out_dir: Path
    errors: list[tuple[str, str, str]] = field(default_factory=list)


# ================================================================================================ input helpers

PRESET_INPUT_KEYS = ("size", "resize", "crop_pct", "interpolation", "scale16", "dicom_window", "dicom_fields")


def scan_input_spec(preset: Mapping | None) -> InputSpec:
    """The grid the detectors run on: the preset's `input:` section (size, resize, crop_pct, interpolation,
    scale16 for 16-bit images, dicom_window, dicom_fields plus the header fields a region's presence_from
    names), default 224 stretch."""
    inp = dict((preset or {}).get("input") or {})
    from .run import INPUT_KEYS
    unknown = [str(k) for k in inp if k not in INPUT_KEYS and k not in PRESET_INPUT_KEYS]
    if unknown:
        raise ConfigError(f"input: unknown key(s) {unknown}; expected some of {list(PRESET_INPUT_KEYS)}")
    model_only = [str(k) for k in inp if k not in PRESET_INPUT_KEYS]
    if model_only:  # accepted and ignored, they would look as if they changed something
        raise ConfigError(f"input: {model_only} belong to the run's config.yaml (the model's own preprocessing); "
                          f"a preset's input sets the grid of scan and masks: {list(PRESET_INPUT_KEYS)}")
    from .dicom import fields_for_regions
    try:
        return InputSpec(size=int(inp.get("size", 224)), resize=str(inp.get("resize", "stretch")),
                         crop_pct=float(inp.get("crop_pct", 1.0)),
                         interpolation=str(inp.get("interpolation", "bilinear")),
                         scale16=scale16_value(inp.get("scale16", "max")),
                         dicom_window=str(inp.get("dicom_window", "header")),
                         dicom_fields=fields_for_regions(inp.get("dicom_fields"), (preset or {}).get("regions")))
    except ConfigError:  # InputSpec's own one-line message names the key
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"input: invalid value ({e})") from None


def prepare_scan(data: str | Path, config: str | Path, label_col: str | None = None
                 ) -> tuple[dict, pd.DataFrame, InputSpec]:
    """(preset, manifest, spec) for `cli.py scan`: load the preset, then the manifest with the preset's `data:`
    mapping; `label_col` maps the label onto that column (e.g. "isic2017_class"), overriding the preset.
    Raises ConfigError / ManifestError with one line."""
    from masks.presets import load_preset

    from .manifest import DataSpec, load_manifest
    preset = load_preset(config)
    data_d = dict(preset.get("data") or {})
    if label_col:
        data_d["columns"] = {**dict(data_d.get("columns") or {}), "label": label_col}
    manifest = load_manifest(data, DataSpec.from_dict(data_d), require_label=False)
    if "label" not in manifest.columns or manifest["label"].notna().sum() == 0:
        cols = [c for c in manifest.columns if not str(c).startswith("_") and c not in ("image_id", "label", "split")]
        raise ManifestError(f"{data}: no label column among {cols}; name one with --label-col COL "
                            "(or the preset's data.columns: {label: COL})")
    return preset, manifest, scan_input_spec(preset)


INT_OPTIONS = {"min_n": 1, "top_k": 0}  # smallest value of each integer option (top_k 0: no contact sheets)


def _check_int_option(key: str, v) -> None:
    lo = INT_OPTIONS[key]
    if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= lo):
        raise ConfigError(f"scan.{key}: expected " + ("a positive integer" if lo == 1 else f"an integer ≥ {lo}")
                          + f", got {v!r}")


def _scan_options(preset: Mapping) -> dict:
    sec = preset.get("scan") or {}
    if not isinstance(sec, Mapping):
        raise ConfigError(f"scan: expected a mapping of options, got {type(sec).__name__}")
    unknown = sorted(set(sec) - set(SCAN_KEYS))
    if unknown:
        raise ConfigError(f"scan: unknown key(s) {unknown}; expected {list(SCAN_KEYS)}")
    for k, v in sec.items():
        if k in INT_OPTIONS:
            _check_int_option(k, v)
    for k in ("flag_cols", "by"):
        v = sec.get(k)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            raise ConfigError(f"scan.{k}: expected a list of column names, got {v!r}")
    if sec.get("id_col") is not None and not isinstance(sec["id_col"], str):
        raise ConfigError(f"scan.id_col: expected a column name, got {sec['id_col']!r}")
    return dict(sec)


def _artifact_plan(preset: Mapping, flag_cols: Sequence[str]):
    """(RegionSet of the scanned artifact regions, {artifact: source}, {region: why not scanned})."""
    from masks import build_regions, list_regions
    from masks.registry import RegionSet
    rs = build_regions(preset.get("regions"))
    detectors = {d["name"]: d["detector"] for d in list_regions(details=True)}
    keep, sources, skipped = [], {}, {}
    for c in rs.configs:
        if c.kind != "artifact":
            skipped[c.name] = "target region"
        elif c.source == "file":
            keep.append(c)
            sources[c.name] = "file"
        elif detectors.get(c.name):
            keep.append(c)
            sources[c.name] = "detector"
        else:
            skipped[c.name] = "geometric region (no detection)"
    for col in flag_cols:
        if col in sources:
            raise ConfigError(f"flag_cols: {col!r} is also a region of the preset; rename the column",
                              param="flag_cols")
        sources[col] = "flag"
    return RegionSet(keep), sources, skipped


_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f"}


def _parse_flags(s: pd.Series, col: str) -> pd.Series:
    """0/1 (or true/false) column → pandas 'boolean' (NA = unknown). ManifestError on anything else."""
    out = []
    for i, v in enumerate(s.tolist()):
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            out.append(pd.NA)
            continue
        t = str(v).strip().lower()
        if t in _TRUE:
            out.append(True)
        elif t in _FALSE:
            out.append(False)
        elif t == "":
            out.append(pd.NA)
        else:
            raise ManifestError(f"flag_cols: column {col!r} holds {v!r} in row {i + 2}; expected 0/1 "
                                "(or true/false; empty = unknown)", param="flag_cols")
    return pd.Series(out, index=s.index, dtype="boolean")


# ================================================================================================ perceptual hash

def _dct_hash(images: np.ndarray | torch.Tensor, size: int, low: int) -> np.ndarray:
    """DCT hashes of uint8 N×H×W×3 RGB images: N×(low²/64) uint64 words, first bit the most significant.

    Per image: ITU-R 601 luminance → size×size (bilinear with antialiasing) → 2-D DCT-II (scipy.fft,
    unnormalised) → the low×low lowest frequencies (DC included) → bit = coefficient > their median, row-major
    (coefficients below 1e-9 of the largest are taken as 0, so a flat image sets the DC bit alone). Batched:
    one resize and one DCT call for the whole batch."""
    import torch.nn.functional as F
    from scipy import fft

    t = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"images: expected uint8 N×H×W×3, got shape {tuple(t.shape)}")
    words = low * low // 64
    if len(t) == 0:
        return np.zeros((0, words), np.uint64)
    w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32)
    g = (t.float() * w).sum(-1)[:, None]
    g = F.interpolate(g, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    c = fft.dct(fft.dct(g[:, 0].double().numpy(), axis=1), axis=2)
    lowc = c[:, :low, :low].reshape(len(c), low * low)
    # floating-point dust (|c| < 1e-9 of the largest) is zero, so flat images hash deterministically
    lowc = np.where(np.abs(lowc) < 1e-9 * np.abs(lowc).max(axis=1, keepdims=True), 0.0, lowc)
    bits = lowc > np.median(lowc, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").reshape(len(c), words).astype(np.uint64)


def phash_images(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """64-bit DCT perceptual hashes (uint64, shape (N,)) of uint8 N×H×W×3 RGB images: `_dct_hash` at 32×32,
    8×8 frequencies (the pHash of Zauner 2010 as `imagehash.phash` computes it; a flat image hashes to 1 << 63).
    It finds the candidate near-duplicate pairs; it sees the layout only (a dark lesion in the middle of skin),
    so `detail_hash_images` confirms them."""
    return _dct_hash(images, PHASH_SIZE, PHASH_LOW)[:, 0]


def detail_hash_images(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """256-bit DCT hashes (uint64, shape (N, 4)) of uint8 N×H×W×3 RGB images: `_dct_hash` at 64×64, 16×16
    frequencies. The mid frequencies it adds (hair, skin texture, the lesion's own pattern) tell two images with
    the same layout apart, which the 64-bit pHash cannot; a re-encoded, rescaled or re-exposed copy keeps them."""
    return _dct_hash(images, DETAIL_SIZE, DETAIL_LOW)


_POP8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit differences between uint64 hashes (broadcast; for multi-word hashes, sum over the last axis)."""
    x = np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64))
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    return _POP8[x[..., None].view(np.uint8)].sum(-1).astype(np.int64)


def _near_pairs(h: np.ndarray, groups: np.ndarray, thr: int, cross_only: bool) -> list[tuple[int, int, int]]:
    """(i, j, distance) with i < j and hamming ≤ thr (and groups[i] != groups[j] when cross_only), chunked."""
    n = len(h)
    out: list[tuple[int, int, int]] = []
    step = max(1, (1 << 22) // max(n, 1))
    for s in range(0, n, step):
        d = hamming(h[s:s + step, None], h[None, :])
        ii, jj = np.nonzero(d <= thr)
        keep = jj > ii + s
        if cross_only:
            keep &= groups[ii + s] != groups[jj]
        out += [(int(i + s), int(j), int(d[i, j])) for i, j in zip(ii[keep], jj[keep])]
    return out


def near_duplicate_pairs(h: np.ndarray, hd: np.ndarray, groups: np.ndarray, thr: int,
                         cross_only: bool) -> list[tuple[int, int, int, int]]:
    """pHash candidate pairs with their detail distance: (i, j, pHash bits, detail bits), i < j, pHash ≤ thr
    (`_near_pairs`), sorted by pHash distance then index. h: (N,) 64-bit hashes; hd: (N, 4) 256-bit ones."""
    pairs = sorted(_near_pairs(h, groups, thr, cross_only), key=lambda t: (t[2], t[0], t[1]))
    if not pairs:
        return []
    ii, jj = (np.array([p[k] for p in pairs], dtype=np.int64) for k in (0, 1))
    return [(i, j, d, int(dd)) for (i, j, d), dd in zip(pairs, hamming(hd[ii], hd[jj]).sum(-1))]


# ================================================================================================ statistics

def odds_ratio_2x2(a: int, b: int, c: int, d: int, alpha: float = 0.05) -> dict:
    """Odds ratio of the 2×2 table [[a, b], [c, d]] (rows: group / rest; columns: artifact / none), its Woolf
    logit CI and Fisher's exact two-sided p (scipy.stats.fisher_exact on the raw counts).

    OR = a·d / (b·c); CI = exp(log OR ± z·sqrt(1/a + 1/b + 1/c + 1/d)). When any cell is 0, 0.5 is added to all
    four (Haldane–Anscombe) for the estimate and the CI (`corrected` True). E.g. (8, 2, 1, 9) → OR 36.
    Returns {value, lo, hi, p, corrected}.
    """
    from scipy.stats import fisher_exact, norm
    cells = [int(a), int(b), int(c), int(d)]
    if min(cells) < 0:
        raise ValueError(f"odds_ratio_2x2: expected non-negative counts, got {cells}")
    p = float(fisher_exact([[cells[0], cells[1]], [cells[2], cells[3]]], alternative="two-sided")[1])
    corrected = min(cells) == 0
    fa, fb, fc, fd = (x + 0.5 for x in cells) if corrected else map(float, cells)
    lor = math.log(fa * fd / (fb * fc))
    se = math.sqrt(1 / fa + 1 / fb + 1 / fc + 1 / fd)
    z = float(norm.ppf(1 - alpha / 2))
    return {"value": math.exp(lor), "lo": math.exp(lor - z * se), "hi": math.exp(lor + z * se), "p": p,
            "corrected": corrected}


def _corrected_v(t: np.ndarray) -> np.ndarray:
    """Bias-corrected Cramér's V of B stacked r×c count tables (B×r×c → B), rows and columns with zero totals left
    out per table; NaN where fewer than two non-empty rows or columns remain (the formula of `cramers_v`)."""
    t = t.astype(np.float64)
    n = t.sum((1, 2))
    rs, cs = t.sum(2), t.sum(1)
    exp = rs[:, :, None] * cs[:, None, :] / np.maximum(n, 1)[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = np.where(exp > 0, (t - exp) ** 2 / np.where(exp > 0, exp, 1), 0.0).sum((1, 2))
        r, c = (rs > 0).sum(1), (cs > 0).sum(1)
        phi2 = np.maximum(0.0, chi2 / n - (r - 1) * (c - 1) / (n - 1))
        denom = np.minimum(r - (r - 1) ** 2 / (n - 1), c - (c - 1) ** 2 / (n - 1)) - 1
        v = np.sqrt(phi2 / denom)
    return np.where((r >= 2) & (c >= 2) & (n >= 2) & (denom > 0), v, np.nan)


def cramers_v(table, n_mc: int = 4000, seed: int = 0, n_boot: int = 1000, alpha: float = 0.05) -> dict:
    """Cramér's V of an r×c contingency table with Pearson's χ² (scipy.stats.chi2_contingency, correction=False),
    bias-corrected.

    The plain V = sqrt(φ² / (min(r, c) − 1)), φ² = χ²/n, is inflated when groups are small: under independence
    E[φ²] ≈ (r−1)(c−1)/(n−1), so the plain V averages about 0.28 for 6 labels × present/absent at n = 60
    (tests/test_scan.py). `value` is Bergsma's
    (2013, J. Korean Stat. Soc. 42:323) correction:
    sqrt(max(0, φ² − (r−1)(c−1)/(n−1)) / min(r̃ − 1, c̃ − 1)),
    r̃ = r − (r−1)²/(n−1), c̃ likewise (R: rcompanion::cramerV(bias.correct = TRUE)); `uncorrected` is the
    plain V. Rows/columns with zero totals are dropped first; fewer than 2 left, or n < 2 →
    undefined (value NaN, note). lo, hi: percentile bootstrap CI of the corrected V (n_boot tables drawn
    multinomially from the observed cell shares, i.e. the images resampled; seeded; None when n_boot = 0).
    Returns {value, lo, hi, uncorrected, chi2, p, p_method, dof, n, note}. When more than 20 % of the
    expected counts are below 5, the χ² distribution does not hold (a small group can make the χ² p far too small): p is then
    the Monte Carlo p of the same statistic over `n_mc` tables with the observed margins (the exact conditional
    test, as R's chisq.test(simulate.p.value = TRUE); Hope 1968), p_method "monte carlo", and the note says so.
    """
    from scipy.stats import chi2_contingency
    t = np.asarray(table, dtype=np.float64)
    t = t[t.sum(1) > 0][:, t.sum(0) > 0] if t.size else t
    n = int(t.sum())
    if t.ndim != 2 or min(t.shape) < 2 or n < 2:
        return {"value": NAN, "lo": NAN, "hi": NAN, "uncorrected": NAN, "chi2": NAN, "p": NAN, "p_method": "",
                "dof": 0, "n": n, "note": "undefined: fewer than two non-empty rows or columns"}
    chi2, p, dof, exp = chi2_contingency(t, correction=False)
    r, c = t.shape
    v_plain = math.sqrt(chi2 / (n * (min(r, c) - 1)))
    phi2 = max(0.0, chi2 / n - (r - 1) * (c - 1) / (n - 1))
    denom = min(r - (r - 1) ** 2 / (n - 1), c - (c - 1) ** 2 / (n - 1)) - 1
    v = math.sqrt(phi2 / denom) if denom > 0 else NAN
    low = int((exp < 5).sum())
    note, method = "", "chi2"
    if low > 0.2 * exp.size:
        p, method = monte_carlo_chi2_p(t, chi2, exp, n_mc, seed), "monte carlo"
        note = (f"{low} of {exp.size} expected counts < 5: p by Monte Carlo over {n_mc} tables with the same "
                "margins (the χ² approximation does not hold)")
    lo = hi = None
    if n_boot > 0:
        draws = np.random.default_rng(seed).multinomial(n, (t / n).ravel(), size=n_boot).reshape(n_boot, r, c)
        vb = _corrected_v(draws)
        vb = vb[np.isfinite(vb)]
        lo, hi = (float(x) for x in np.quantile(vb, [alpha / 2, 1 - alpha / 2])) if vb.size else (NAN, NAN)
    return {"value": float(v), "lo": lo, "hi": hi, "uncorrected": float(v_plain), "chi2": float(chi2), "p": float(p),
            "p_method": method, "dof": int(dof), "n": n, "note": note}


def monte_carlo_chi2_p(t: np.ndarray, chi2: float, exp: np.ndarray, n_mc: int, seed: int) -> float:
    """P(χ² ≥ observed) over random tables with the margins of `t` (r×c counts): the column labels of the n
    observations are permuted against their row labels, which draws tables from the exact conditional
    (multivariate hypergeometric) distribution; p = (1 + #{χ²* ≥ χ²}) / (1 + n_mc) (Davison & Hinkley 1997)."""
    r, c = t.shape
    counts = t.astype(np.int64).ravel()
    rows = np.repeat(np.repeat(np.arange(r), c), counts)
    cols = np.repeat(np.tile(np.arange(c), r), counts).astype(np.int16)
    rng = np.random.default_rng(seed)
    ge, done, chunk = 0, 0, max(1, min(n_mc, 2_000_000 // max(len(cols), 1)))
    while done < n_mc:
        b = min(chunk, n_mc - done)
        perm = rng.permuted(np.broadcast_to(cols, (b, len(cols))), axis=1)
        idx = rows[None, :] * c + perm + (np.arange(b) * r * c)[:, None]
        tabs = np.bincount(idx.ravel(), minlength=b * r * c).reshape(b, r, c)
        stat = ((tabs - exp) ** 2 / exp).sum(axis=(1, 2))
        ge += int((stat >= chi2 * (1 - 1e-9)).sum())
        done += b
    return (1 + ge) / (1 + n_mc)


def _prev(k: int, n: int, min_n: int, alpha: float) -> dict:
    """Prevalence k/n with its Wilson CI; n < min_n → too small (value and CI NaN, k and n kept)."""
    if n < min_n:
        d = Estimate(NAN, NAN, NAN, n, True, None, f"too small (n={n} < {min_n})").to_dict()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            d = proportion_ci(k, n, alpha).to_dict()
    d["k"] = int(k)
    return d


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _fmt_or(x: float) -> str:
    return "∞" if math.isinf(x) else (f"{x:.2g}" if x < 1 else f"{x:.1f}")


def _strength(e: dict) -> tuple:
    """Sort key (ascending = strongest first): defined before too small/undefined, then the CI bound nearer
    OR = 1 on the log scale (0 when the CI spans 1), then |log OR|."""
    v, lo, hi = e["odds_ratio"]["value"], e["odds_ratio"]["lo"], e["odds_ratio"]["hi"]
    if e["too_small"] or not np.isfinite(v) or v <= 0:
        return (1, 0.0, 0.0)
    sep = max(0.0, math.log(lo), -math.log(hi))
    return (0, -sep, -abs(math.log(v)))


def _associations(labels: np.ndarray, pres: np.ndarray, artifact: str, classes: list[str], positive: str | None,
                  min_n: int, alpha: float) -> list[dict]:
    """One-vs-rest 2×2 analyses of one artifact (labels: str array without NA; pres: bool array)."""
    if len(classes) < 2:
        return []
    if len(classes) == 2:
        counts = {c: int((labels == c).sum()) for c in classes}
        first = positive if positive in classes else min(classes, key=lambda c: (counts[c], c))
        pairs = [(first, next(c for c in classes if c != first))]
    else:
        pairs = [(c, None) for c in classes]
    out = []
    for cls, other in pairs:
        g = labels == cls
        a, b = int((g & pres).sum()), int((g & ~pres).sum())
        c, d = int((~g & pres).sum()), int((~g & ~pres).sum())
        vs = other if other is not None else "the rest"
        n1, n0 = a + b, c + d
        e = {"artifact": artifact, "class": cls, "vs": vs, "table": [[a, b], [c, d]], "n_class": n1, "n_rest": n0,
             "prevalence_class": a / n1 if n1 else NAN, "prevalence_rest": c / n0 if n0 else NAN,
             "too_small": bool(min(n1, n0) < min_n), "note": ""}
        if e["too_small"]:
            e["odds_ratio"] = {"value": NAN, "lo": NAN, "hi": NAN, "p": NAN, "corrected": False}
            e["note"] = f"too small (n_{cls}={n1}, n_rest={n0}; min_n={min_n})"
            e["text"] = f"{artifact} × {cls}: too small ({cls} n={n1}, {vs} n={n0})"
        elif a + c == 0 or b + d == 0:
            e["odds_ratio"] = {"value": NAN, "lo": NAN, "hi": NAN, "p": 1.0, "corrected": False}
            e["note"] = "undefined: the artifact is " + ("never" if a + c == 0 else "always") + " present"
            e["text"] = f"{artifact} × {cls}: {e['note']}"
        else:
            o = odds_ratio_2x2(a, b, c, d, alpha)
            e["odds_ratio"] = o
            e["note"] = "Haldane–Anscombe 0.5 added (a zero cell)" if o["corrected"] else ""
            vs_w = vs if other is not None else "the other classes"
            e["text"] = (f"{artifact} in {_pct(a / n1)} of {cls} ({a}/{n1}) vs {_pct(c / n0)} of {vs_w} "
                         f"({c}/{n0}): OR {_fmt_or(o['value'])} "
                         f"[{_fmt_or(o['lo'])}, {_fmt_or(o['hi'])}], Fisher p {'' if o['p'] <= 0 else '= '}{_fp(o['p'])}")
        out.append(e)
    return out


def _by_table(keys: np.ndarray, pres: np.ndarray, min_n: int, alpha: float, n_boot: int = 1000,
              seed: int = 0) -> tuple[dict, dict]:
    """Prevalence per group and Cramér's V of group × artifact (keys: str array; pres: bool array)."""
    groups = sorted(pd.unique(keys), key=str)
    prev = {str(g): _prev(int(pres[keys == g].sum()), int((keys == g).sum()), min_n, alpha) for g in groups}
    tab = [[int((pres & (keys == g)).sum()), int((~pres & (keys == g)).sum())] for g in groups]
    return prev, cramers_v(tab, seed=seed, n_boot=n_boot, alpha=alpha)


def _diff_means_ci(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int, alpha: float) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(x) − mean(y), resampling each group independently (seeded)."""
    rng = np.random.default_rng(seed)

    def reps(v: np.ndarray) -> np.ndarray:
        out, rows = [], max(1, (1 << 20) // max(len(v), 1))
        for s in range(0, n_boot, rows):
            out.append(v[rng.integers(0, len(v), (min(rows, n_boot - s), len(v)))].mean(1))
        return np.concatenate(out)
    dif = reps(x) - reps(y)
    lo, hi = np.percentile(dif, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def _model_by_artifact(df: pd.DataFrame, artifacts: list[str], positive: str | None, min_n: int, alpha: float,
                       n_boot: int, seed: int) -> dict:
    """Accuracy, sensitivity/specificity of `positive` and mean P(positive) of negatives, with vs without."""
    from scipy.stats import mannwhitneyu
    lab = df["label"].astype(object)
    ok = lab.notna().to_numpy() & df["pred"].notna().to_numpy()
    out = {}
    for a in artifacts:
        pres = df[f"present_{a}"].astype("boolean")
        known = ok & pres.notna().to_numpy()
        p = pres.fillna(False).to_numpy(dtype=bool)
        entry: dict = {"n_known": int(known.sum())}
        pneg: dict = {}
        for name, m in (("with", known & p), ("without", known & ~p)):
            sub = df[m]
            correct = (sub["label"].astype(str) == sub["pred"].astype(str)).to_numpy()
            e = {"n": int(m.sum()), "accuracy": _prev(int(correct.sum()), len(sub), min_n, alpha)}
            if positive is not None:
                yp = (sub["label"].astype(str) == positive).to_numpy()
                pp = (sub["pred"].astype(str) == positive).to_numpy()
                e["sensitivity"] = _prev(int((yp & pp).sum()), int(yp.sum()), min_n, alpha)
                e["specificity"] = _prev(int((~yp & ~pp).sum()), int((~yp).sum()), min_n, alpha)
                v = sub.loc[~yp, f"p_{positive}"].to_numpy(dtype=np.float64)
                v = v[np.isfinite(v)]
                pneg[name] = v
                if len(v) < min_n:
                    e["mean_p_positive_neg"] = Estimate(NAN, NAN, NAN, len(v), True, None,
                                                        f"too small (n={len(v)} < {min_n})").to_dict()
                else:
                    lo, hi = bootstrap_ci(v, lambda s: s.mean(axis=1), n_boot=n_boot, seed=seed, alpha=alpha,
                                          vectorized=True)
                    e["mean_p_positive_neg"] = Estimate(float(v.mean()), lo, hi, len(v)).to_dict()
            entry[name] = e
        if positive is not None:
            x, y = pneg["with"], pneg["without"]
            if min(len(x), len(y)) < min_n:
                entry["diff_mean_p_positive_neg"] = Estimate(
                    NAN, NAN, NAN, len(x) + len(y), True, None,
                    f"too small (n_with={len(x)}, n_without={len(y)}; min_n={min_n})").to_dict()
            else:
                lo, hi = _diff_means_ci(x, y, n_boot, seed, alpha)
                mw = mannwhitneyu(x, y, alternative="two-sided")
                entry["diff_mean_p_positive_neg"] = Estimate(float(x.mean() - y.mean()), lo, hi, len(x) + len(y),
                                                             False, float(mw.pvalue),
                                                             "with − without; p: Mann–Whitney U").to_dict()
            w, wo = entry["with"], entry["without"]

            def f(e):
                return "too small" if e["too_small"] else (
                    "n/a" if not np.isfinite(e["value"]) else f"{e['value']:.2f} [{e['lo']:.2f}, {e['hi']:.2f}]")
            entry["text"] = (f"{a}: specificity for {positive} {f(w['specificity'])} with vs "
                             f"{f(wo['specificity'])} without (n={w['n']} vs {wo['n']}); mean P({positive}) of "
                             f"negatives {f(w['mean_p_positive_neg'])} vs {f(wo['mean_p_positive_neg'])}")
        out[a] = entry
    return out


# ================================================================================================ the scan

def _validate(manifest: pd.DataFrame, by, id_col, flag_cols, phash_threshold, workers, limit, min_n, top_k,
              detail_threshold=DETAIL_THRESHOLD) -> None:
    if not isinstance(manifest, pd.DataFrame) or "image" not in manifest.columns:
        raise ManifestError("manifest: expected a DataFrame from audit.manifest.load_manifest (column 'image')")
    if "label" not in manifest.columns or manifest["label"].notna().sum() == 0:
        raise ManifestError("manifest: no label column (map one with data.columns: {label: COL} or --label-col COL)")
    cols = list(manifest.columns)
    for c in by:
        if c not in cols and not str(c).startswith("dicom_"):
            raise ManifestError(f"by column {c!r} not found; columns are {cols}", param="by")
    if id_col is not None and id_col not in cols:
        raise ManifestError(f"id_col {id_col!r} not found; columns are {cols}", param="id_col")
    for c in flag_cols:
        if c not in cols:
            raise ManifestError(f"flag_cols: column {c!r} not found; columns are {cols}", param="flag_cols")
    if not (isinstance(phash_threshold, (int, np.integer)) and 0 <= phash_threshold <= PHASH_BITS):
        raise ConfigError(f"phash_threshold: expected an integer in [0, {PHASH_BITS}], got {phash_threshold!r}",
                          param="phash_threshold")
    if not (isinstance(detail_threshold, (int, np.integer)) and 0 <= detail_threshold <= DETAIL_BITS):
        raise ConfigError(f"detail_threshold: expected an integer in [0, {DETAIL_BITS}], got {detail_threshold!r}",
                          param="detail_threshold")
    if not (isinstance(workers, (int, np.integer)) and workers >= 0):
        raise ConfigError(f"workers: expected an integer ≥ 0, got {workers!r}", param="workers")
    if limit is not None and not (isinstance(limit, (int, np.integer)) and limit >= 1):
        raise ConfigError(f"limit: expected a positive integer, got {limit!r}", param="limit")
    _check_int_option("min_n", min_n)
    _check_int_option("top_k", top_k)


def run_scan(preset: dict, manifest: pd.DataFrame, out_dir: Path, spec: InputSpec, by: Sequence[str] = (),
             id_col: str | None = None, flag_cols: Sequence[str] = (), run_dir: str | None = None,
             positive: str | None = None, workers: int = 0, limit: int | None = None, phash_threshold: int = 6,
             detail_threshold: int = DETAIL_THRESHOLD,
             progress: Progress | None = None, *, min_n: int | None = None, top_k: int | None = None,
             alpha: float = 0.05, batch_size: int = 32, device: str = "cpu", n_boot: int = 1000,
             seed: int = 0) -> ScanResult:
    """Scan a dataset for artifacts, their association with the label, and split leakage (no model needed).

    preset: a parsed preset (`masks.load_preset`): its artifact `regions:` are scanned (detectors and
      `source: file` regions; geometric bands such as border/corners are skipped, having nothing to detect),
      and an optional `scan:` section {flag_cols, by, id_col, min_n, top_k} supplies defaults for arguments
      left empty. manifest: canonical rows (`audit.manifest.load_manifest`); needs a label column.
    out_dir: folder for scan.csv, scan.json, contact_<artifact>.png, errors.csv, near_duplicates.csv,
      leaking_ids.csv. spec: the grid the detectors (and the pHash) see, e.g. `scan_input_spec(preset)`.
    by: metadata columns to tabulate prevalence by (site, view, split). id_col: patient / lesion id column for
      split leakage. flag_cols: 0/1 metadata columns scanned as extra artifacts (e.g. bissoto_ink).
    run_dir: a training run (`audit.run.load_run`): adds the model's metrics with vs without each artifact.
      positive: the safety-critical class (default: the run's positive_class, then the preset's
      audit.positive); for a binary label without it, the minority class is compared with the other.
    workers: DataLoader worker processes (0 = main process). limit: scan only the first N rows.
    phash_threshold: a candidate near-duplicate pair when the 64-bit pHashes differ in ≤ this many bits (default 6);
      detail_threshold: the candidate is confirmed when the 256-bit detail hashes differ in ≤ this many (48).
    progress: called as progress(done, total) after each batch. min_n: groups below it are too small (10).
    top_k: images per contact sheet (16). alpha: 1 − CI level. n_boot, seed: bootstrap of mean P(positive).
    Raises ManifestError / ConfigError / RunDirError with one line for bad input; unreadable images are
    skipped, counted and listed in errors.csv. Returns a ScanResult.
    """
    t0 = time.perf_counter()
    preset = dict(preset or {})
    opts = _scan_options(preset)
    by = list(by or opts.get("by") or [])
    flag_cols = list(flag_cols or opts.get("flag_cols") or [])
    id_col = id_col or opts.get("id_col")
    min_n = int(min_n if min_n is not None else opts.get("min_n", 10))  # preset values checked by _scan_options
    top_k = int(top_k if top_k is not None else opts.get("top_k", 16))
    from .dicom import PATIENT_HASH, add_patient_hash
    if id_col == PATIENT_HASH and PATIENT_HASH not in manifest.columns:  # salted PatientID hash for leakage
        try:
            manifest = add_patient_hash(manifest)
        except ValueError as e:
            raise ConfigError(f"id_col {PATIENT_HASH}: {e}", param="id_col") from None
    _validate(manifest, by, id_col, flag_cols, phash_threshold, workers, limit, min_n, top_k, detail_threshold)
    rs, sources, skipped = _artifact_plan(preset, flag_cols)
    if not sources:
        raise ConfigError("scan: nothing to scan: the preset has no artifact detector or file region, and no "
                          "--flag-cols were given")
    rows = manifest if limit is None else manifest.iloc[:limit]
    rows = rows.reset_index(drop=True)
    flags = {c: _parse_flags(rows[c], c) for c in flag_cols}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # --- the model (optional): loaded before the pass so bad run dirs fail before any work
    model = run = None
    if run_dir is not None:
        from .pipeline import resolve_device
        from .run import load_run
        model, run = load_run(run_dir)
        dev = resolve_device(device)
        bad = ~rows["label"].isna() & ~rows["label"].isin(run.classes)
        if bad.any():
            i = int(bad.to_numpy().argmax())
            raise ManifestError(f"manifest: label {rows['label'].iloc[i]!r} (row {i + 2}) is not among the run's "
                                f"classes {run.classes}")
        positive = positive or run.positive_class or (preset.get("audit") or {}).get("positive")
        if positive is not None and positive not in run.classes:
            raise ConfigError(f"positive {positive!r}: not among the run's classes {run.classes}",
                              param="positive")
        geom = (run.input.size, run.input.resize, run.input.crop_pct, run.input.interpolation, run.input.scale16,
                run.input.dicom_window)
        # same grid (same pixels): predict in the scan's own pass
        in_loop = geom == (spec.size, spec.resize, spec.crop_pct, spec.interpolation, spec.scale16, spec.dicom_window)
        model.to(dev)
    else:
        positive = positive or (preset.get("audit") or {}).get("positive")
        labels_seen = set(rows["label"].dropna().astype(str))
        if positive is not None and positive not in labels_seen:
            raise ConfigError(f"positive {positive!r}: not among the labels {sorted(labels_seen)}", param="positive")
        in_loop = False

    from masks.export import PALETTE, THUMB, contact_sheet, overlay
    from masks.registry import RegionResult

    from .data import make_loader
    from .preprocess import normalize
    region_names = rs.names
    colors = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(sources)}
    heaps: dict[str, list] = {a: [] for a in sources}
    recs = rows.to_dict("records")
    records, hashes, details, errors, probs_rows, row_pos = [], [], [], [], [], []
    n_warn = 0
    loader = make_loader(rows, spec, batch_size, int(workers), rs.compute if len(rs) else None)
    done = 0
    try:
        for batch in loader:
            for i, err in batch["failed"]:
                errors.append((str(recs[i]["image_id"]), str(recs[i]["image"]), err))
            done += len(batch["failed"])
            if batch["img"] is not None:
                idx = batch["idx"]
                hs = phash_images(batch["img"])
                hd = detail_hash_images(batch["img"])
                if in_loop:
                    with torch.no_grad():
                        pr = torch.softmax(model(normalize(batch["img"].to(dev), run.input)).float(), 1).cpu().numpy()
                for j, i in enumerate(idx):
                    r = recs[i]
                    rec = {"image_id": r["image_id"], "image": r["image"], "label": r["label"], "split": r["split"]}
                    for c in [id_col, *by]:
                        if c is not None and c not in rec and c in r:  # a dicom_ column comes from the header
                            rec[c] = r[c]
                    rec.update(format_record(batch["src_hw"][j], batch["src_info"][j]))
                    rec["phash"] = f"{int(hs[j]):016x}"
                    rec["phash256"] = "".join(f"{int(x):016x}" for x in hd[j])
                    masks = batch["masks"][j] if "masks" in batch else {}
                    notes = batch["notes"][j] if "notes" in batch else {}
                    n_warn += len(batch["warnings"][j]) if "warnings" in batch else 0
                    for a in region_names:
                        pres = batch["present"][j].get(a)  # a file region's presence is what its file says
                        if sources[a] == "file":
                            score = float(masks[a].float().mean()) if a in masks else (0.0 if pres is False else NAN)
                        else:
                            score = batch["scores"][j].get(a, NAN)
                        rec[f"score_{a}"], rec[f"present_{a}"] = score, pres
                    for c in flag_cols:
                        v = flags[c].iloc[i]
                        rec[f"score_{c}"] = NAN if v is pd.NA else float(bool(v))
                        rec[f"present_{c}"] = None if v is pd.NA else bool(v)
                    if notes:
                        rec["region_notes"] = "; ".join(f"{k}: {v}" for k, v in notes.items())
                    for c, v in r.items():  # the manifest's metadata, after the scan's own columns
                        if c not in rec and f"present_{c}" not in rec or c in flag_cols:
                            rec.setdefault(c, v)
                    if in_loop:
                        probs_rows.append((i, pr[j]))
                    # contact sheets: keep the top_k scores per artifact, thumbnails made only for entrants
                    for a in sources:
                        s = rec[f"score_{a}"]
                        if top_k == 0 or s is None or not np.isfinite(s):
                            continue
                        key = (float(s), -len(records))
                        hp = heaps[a]
                        if len(hp) < top_k or key > hp[0][:2]:
                            grid = batch["img"][j].numpy()
                            m = masks.get(a)
                            ov = overlay(grid, {a: RegionResult(m.numpy() if m is not None else None)}, colors)
                            th = Image.fromarray(ov).resize((THUMB, THUMB), Image.BILINEAR)
                            cap = f"{'*' if rec[f'present_{a}'] else ' '}{s:.3g} {r['image_id']}"
                            item = (key[0], key[1], cap, th)
                            if len(hp) < top_k:
                                heapq.heappush(hp, item)
                            else:
                                heapq.heapreplace(hp, item)
                    records.append(rec)
                    row_pos.append(i)
                    hashes.append(hs[j])
                    details.append(hd[j])
                done += len(idx)
            if progress:
                progress(done, len(rows))
    except BaseException:  # interrupted (Ctrl-C) or failed: the rows scanned so far are kept
        if records:
            pd.DataFrame.from_records(records).to_csv(out_dir / "scan.partial.csv", index=False)
        raise
    (out_dir / "scan.partial.csv").unlink(missing_ok=True)  # a finished scan replaces an interrupted one
    t_pass = time.perf_counter() - t0

    if not records:
        raise ManifestError(f"manifest: none of the {len(rows)} images could be read "
                            f"(first error: {errors[0][2] if errors else 'none'})")
    per_image = pd.DataFrame.from_records(records)
    for a in sources:
        per_image[f"present_{a}"] = per_image[f"present_{a}"].astype("boolean")
    h = np.array(hashes, dtype=np.uint64)
    hd_all = np.array(details, dtype=np.uint64).reshape(len(details), DETAIL_BITS // 64)

    # --- model predictions
    classes_run = None
    if run is not None:
        classes_run = list(run.classes)
        if in_loop:
            P = np.full((len(rows), len(classes_run)), np.nan)
            for i, p in probs_rows:
                P[i] = p
        else:
            from .pipeline import predict_probs
            P = predict_probs(model, rows, run.input, dev, SimpleNamespace(batch_size=batch_size,
                                                                           workers=int(workers)))
        model.cpu()
        Pi = P[np.asarray(row_pos, dtype=np.int64)]
        valid = np.isfinite(Pi).all(1)
        per_image["pred"] = pd.array([classes_run[int(k)] if v else pd.NA
                                      for k, v in zip(np.nan_to_num(Pi).argmax(1), valid)], dtype="object")
        per_image["confidence"] = np.where(valid, np.nan_to_num(Pi).max(1), np.nan)
        per_image["correct"] = pd.array([(l == p) if p is not pd.NA and l is not pd.NA and not pd.isna(l) else pd.NA
                                         for l, p in zip(per_image["label"], per_image["pred"])], dtype="boolean")
        for k, c in enumerate(classes_run):
            per_image[f"p_{c}"] = Pi[:, k]

    # --- statistics
    lab_all = per_image["label"]
    labelled = lab_all.notna().to_numpy()
    classes = sorted(lab_all[labelled].astype(str).unique().tolist())
    lab = lab_all.astype(object).where(lab_all.notna(), None).to_numpy()
    artifacts: dict[str, dict] = {}
    associations: list[dict] = []
    undefined: list[str] = []
    for a, src in sources.items():
        pres_s = per_image[f"present_{a}"]
        known = pres_s.notna().to_numpy()
        pres = pres_s.fillna(False).to_numpy(dtype=bool)
        k_all, n_all = int(pres[known].sum()), int(known.sum())
        m = known & labelled
        labs, pl = lab[m].astype(str), pres[m]
        by_label = {c: _prev(int(pl[labs == c].sum()), int((labs == c).sum()), min_n, alpha) for c in classes}
        cv = cramers_v([[int((pl & (labs == c)).sum()), int((~pl & (labs == c)).sum())] for c in classes],
                       seed=seed, n_boot=n_boot, alpha=alpha)
        if not np.isfinite(cv["value"]):
            undefined.append(f"cramers_v[{a}]")
        scores = per_image[f"score_{a}"].to_numpy(dtype=np.float64)
        artifacts[a] = {"source": src, "n_known": n_all, "n_present": k_all, "n_unknown": int(len(known) - n_all),
                        "prevalence": _prev(k_all, n_all, min_n, alpha), "by_label": by_label,
                        "label_association": cv,
                        "score_median": float(np.nanmedian(scores)) if np.isfinite(scores).any() else NAN}
        assoc = _associations(labs, pl, a, classes, positive, min_n, alpha)
        undefined += [f"odds_ratio[{e['artifact']}, {e['class']}]" for e in assoc
                      if not e["too_small"] and not np.isfinite(e["odds_ratio"]["value"])]
        associations += assoc
    associations.sort(key=_strength)
    for rank, e in enumerate(associations, 1):
        e["rank"] = rank

    by_out: dict[str, dict] = {}
    for col in by:
        keys = group_keys(per_image[col]).to_numpy()
        by_out[col] = {}
        for a in sources:
            pres_s = per_image[f"present_{a}"]
            known = pres_s.notna().to_numpy()
            prev, cv = _by_table(keys[known], pres_s.fillna(False).to_numpy(dtype=bool)[known], min_n, alpha,
                                 n_boot, seed)
            by_out[col][a] = {"groups": prev, "association": cv}

    fmt = format_by_label(per_image, classes, min_n, alpha, n_boot, seed)
    from .dicom import device_by_label, device_markdown, model_by_device
    device = device_by_label(per_image, classes, min_n, alpha, n_boot, seed)  # DICOM header fields, if any

    # --- leakage
    leakage = _leakage(rows, per_image, h, hd_all, id_col, phash_threshold, detail_threshold, out_dir)

    # --- model metrics
    model_out = None
    if run is not None:
        model_out = {"run_dir": str(run.run_dir) if run.run_dir else None, "model": f"{run.source}:{run.model_name}",
                     "classes": classes_run, "positive": positive, "input": run.input.to_dict(),
                     "inference": "same pass as the scan" if in_loop else "separate pass (the run's input spec)",
                     "accuracy": _prev(int(per_image["correct"].fillna(False).sum()),
                                       int(per_image["correct"].notna().sum()), min_n, alpha),
                     "by_artifact": _model_by_artifact(per_image, list(sources), positive, min_n, alpha, n_boot,
                                                       seed),
                     "reference": "Winkler et al. 2019, JAMA Dermatol 155(10):1135-1141"}
        if device:
            model_out["by_device"] = model_by_device(per_image, device, positive, min_n, alpha, n_boot, seed)

    # --- files
    sheets = {}
    for a, hp in heaps.items():
        if not hp:
            continue
        items = sorted(hp, key=lambda t: (-t[0], -t[1]))
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in a)
        contact_sheet([(t[2], t[3]) for t in items], {a: colors[a]}).save(out_dir / f"contact_{safe}.png")
        sheets[a] = f"contact_{safe}.png"
    per_image.to_csv(out_dir / "scan.csv", index=False)
    if device:
        (out_dir / "device_bias.md").write_text(device_markdown(device, classes))
    if errors:
        pd.DataFrame(errors, columns=["image_id", "image", "reason"]).to_csv(out_dir / "errors.csv", index=False)
    elif (out_dir / "errors.csv").exists():
        (out_dir / "errors.csv").unlink()
    from .config import package_versions
    from .summary import clean_json
    label_counts = {c: int((lab_all[labelled].astype(str) == c).sum()) for c in classes}
    summary = {
        "schema_version": SCHEMA_VERSION,
        "data": {"n_rows": len(rows), "n_scanned": len(per_image), "n_skipped": len(errors),
                 "n_unlabelled": int((~labelled).sum()), "classes": classes, "label_counts": label_counts,
                 "splits": sorted(per_image["split"].dropna().astype(str).unique().tolist()),
                 "input": spec.to_dict()},
        "options": {"by": by, "id_col": id_col, "flag_cols": flag_cols, "positive": positive, "min_n": min_n,
                    "alpha": alpha, "phash_threshold": int(phash_threshold), "phash_bits": PHASH_BITS,
                    "detail_threshold": int(detail_threshold), "detail_bits": DETAIL_BITS,
                    "workers": int(workers), "limit": limit, "top_k": top_k, "run_dir": run_dir},
        "methods": {
            "prevalence": "Wilson score 95% CI; groups with n < min_n are too small (value null)",
            "odds_ratio": "one class vs the rest (binary label: positive/minority class vs the other); Woolf logit "
                          "CI, Haldane-Anscombe +0.5 to every cell when one is zero; Fisher exact two-sided p",
            "association": "Pearson chi-square without continuity correction; Cramér's V bias-corrected "
                           "(Bergsma 2013; `uncorrected`: sqrt(chi2/(n(min(r,c)-1)))) with a percentile bootstrap "
                           f"CI ({n_boot} multinomial tables, seeded); p by Monte Carlo (4000 tables, same margins) "
                           "when > 20% of expected counts < 5",
            "ranking": "strongest first: the CI bound nearer OR = 1 on the log scale, then |log OR|",
            "phash": f"64-bit DCT pHash of the {PHASH_SIZE}x{PHASH_SIZE} grayscale model-grid image; a candidate "
                     f"near-duplicate pair when Hamming distance <= {int(phash_threshold)} of 64 bits, confirmed when "
                     f"the 256-bit DCT hash of the {DETAIL_SIZE}x{DETAIL_SIZE} image differs in <= "
                     f"{int(detail_threshold)} of 256 bits"},
        "artifacts": artifacts, "skipped_regions": skipped, "associations": associations, "by": by_out,
        "format": fmt, **({"device": device} if device else {}),
        "leakage": leakage, "model": model_out, "contact_sheets": sheets,
        "timing": {"total_s": time.perf_counter() - t0, "scan_pass_s": t_pass,
                   "images_per_s": len(rows) / max(t_pass, 1e-9)},
        "n_mask_warnings": n_warn, "versions": package_versions(),
    }
    if undefined:
        warnings.warn(f"scan: undefined (NaN): {', '.join(undefined[:10])}"
                      f"{' …' if len(undefined) > 10 else ''} (artifact never or always present)",
                      UndefinedMetricWarning, stacklevel=2)
    summary = clean_json(summary)
    (out_dir / "scan.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    return ScanResult(per_image=per_image, summary=summary, out_dir=out_dir, errors=errors)


def _leakage(rows: pd.DataFrame, per_image: pd.DataFrame, h: np.ndarray, hd: np.ndarray, id_col: str | None,
             thr: int, detail_thr: int, out_dir: Path) -> dict:
    """Ids in several splits, and near-duplicate image pairs: candidates by the 64-bit pHash (h (N,), ≤ thr bits),
    confirmed by the 256-bit detail hash (hd (N, 4), ≤ detail_thr bits). All candidates go to
    near_duplicates.csv with `confirmed`; scan.json lists the confirmed pairs."""
    splits_all = group_keys(rows["split"])
    n_splits = rows["split"].dropna().nunique()
    out: dict = {"n_splits": int(n_splits)}
    # same id in several splits (all manifest rows: no image needed)
    ids_path = out_dir / "leaking_ids.csv"
    if id_col is None:
        out["ids"] = {"checked": False, "note": "no --id-col given"}
    elif n_splits < 2:
        one = rows["split"].dropna().astype(str).unique()
        out["ids"] = {"checked": False, "id_col": id_col,
                      "note": f"every image is in split {one[0]!r}" if len(one) else "the manifest has no split column"}
    else:
        d = pd.DataFrame({"id": rows[id_col], "split": splits_all, "image_id": rows["image_id"]}).dropna(subset=["id"])
        g = d.groupby("id", sort=True)
        ns = g["split"].nunique()
        bad = ns[ns > 1].index
        table = [{"id": str(i), "splits": sorted(set(d.loc[d["id"] == i, "split"])),
                  "image_ids": d.loc[d["id"] == i, "image_id"].astype(str).tolist()} for i in bad]
        out["ids"] = {"checked": True, "id_col": id_col, "n_ids": int(d["id"].nunique()), "n_leaking": len(table),
                      "leaking": table[:MAX_JSON_PAIRS], "truncated": len(table) > MAX_JSON_PAIRS}
        if table:
            pd.DataFrame([{"id": t["id"], "splits": ";".join(t["splits"]), "image_ids": ";".join(t["image_ids"])}
                          for t in table]).to_csv(ids_path, index=False)
    if not (out["ids"].get("n_leaking")) and ids_path.exists():
        ids_path.unlink()
    # near-duplicate images by pHash
    sp = group_keys(per_image["split"]).to_numpy()
    cross = n_splits >= 2
    ids = per_image["image_id"].astype(str).to_numpy()
    lab = per_image["label"].astype(object).to_numpy()
    pid = per_image[id_col].astype(object).to_numpy() if id_col is not None and id_col in per_image else None
    cand = []
    for i, j, d, dd in near_duplicate_pairs(h, hd, sp, thr, cross_only=cross):
        e = {"image_id_a": ids[i], "split_a": sp[i], "image_id_b": ids[j], "split_b": sp[j], "distance": d,
             "detail_distance": dd, "confirmed": dd <= detail_thr,
             "label_a": _none_if_na(lab[i]), "label_b": _none_if_na(lab[j])}
        if pid is not None:
            e.update(id_a=_none_if_na(pid[i]), id_b=_none_if_na(pid[j]))
        cand.append(e)
    lst = [e for e in cand if e["confirmed"]]
    out["near_duplicates"] = {"scope": "across splits" if cross else "within the set (no splits)",
                              "threshold": int(thr), "bits": PHASH_BITS, "n_pairs": len(lst),
                              "detail_threshold": int(detail_thr), "detail_bits": DETAIL_BITS,
                              "n_candidates": len(cand), "n_unconfirmed": len(cand) - len(lst),
                              # one picture under two ids defeats a split by id; under two labels, a label is wrong
                              "id_col": id_col if pid is not None else None,
                              "n_different_ids": (sum(_differ(p["id_a"], p["id_b"]) for p in lst)
                                                  if pid is not None else None),
                              "n_different_labels": sum(_differ(p["label_a"], p["label_b"]) for p in lst),
                              "n_images": len({p["image_id_a"] for p in lst} | {p["image_id_b"] for p in lst}),
                              "pairs": lst[:MAX_JSON_PAIRS], "truncated": len(lst) > MAX_JSON_PAIRS}
    dup_path, sheet_path = out_dir / "near_duplicates.csv", out_dir / "near_duplicates.png"
    if cand:
        pd.DataFrame(cand).to_csv(dup_path, index=False)
        out["near_duplicates"]["sheet"] = _pair_sheet(cand, per_image, sheet_path)
    else:
        dup_path.unlink(missing_ok=True)
        sheet_path.unlink(missing_ok=True)
    return out


def _pair_sheet(cand: list[dict], per_image: pd.DataFrame, path: Path) -> str | None:
    """near_duplicates.png: the confirmed pairs, then the unconfirmed ones by detail distance, two pairs per row
    (left ~ right; captions "H<pHash bits> D<detail bits>" and "same" or "check"), re-read from their files."""
    from masks.export import THUMB, contact_sheet

    from .preprocess import load_rgb
    where = dict(zip(per_image["image_id"].astype(str), per_image["image"].astype(str)))
    thumbs: list[tuple[str, Image.Image]] = []
    for e in sorted(cand, key=lambda e: (not e["confirmed"], e["detail_distance"], e["distance"]))[:PAIR_SHEET_PAIRS]:
        try:
            a, b = (Image.fromarray(load_rgb(where[e[k]])).resize((THUMB, THUMB), Image.BILINEAR)
                    for k in ("image_id_a", "image_id_b"))
        except (OSError, ValueError, KeyError):
            continue
        thumbs += [(f"{e['image_id_a'][:16]} H{e['distance']} D{e['detail_distance']}", a),
                   (f"{e['image_id_b'][:16]} {'same' if e['confirmed'] else 'check'}", b)]
    if not thumbs:
        return None
    contact_sheet(thumbs, {"pairs, left ~ right: H = pHash bits, D = detail bits (same: D within the threshold)":
                           (90, 200, 90)}, cols=4).save(path)
    return path.name


# ================================================================================================ rendering

def _fe(e: dict | None, pct: bool = True) -> str:
    """An estimate for the terminal, as the audit's summary writes it ("41% [35%,47%]", "small n=7")."""
    from .terminal import _fmt_est
    return _fmt_est(e, pct=pct)


def _fp(p) -> str:
    """A p-value: 2 significant digits; one that underflowed to 0 in float64 reads "< 1e-300", not "0"."""
    if p is None:
        return "—"
    return "< 1e-300" if p <= 0 else f"{p:.2g}"


def _fv(cv: dict) -> str:
    """Cramér's V with its bootstrap CI over its p, for the terminal ("0.21 [0.15,0.27]" / "p 0.00025*"); "*"
    marks a Monte Carlo p (sparse table, see `cramers_v`)."""
    if cv.get("value") is None:
        return "n/a"
    ci = f" [{cv['lo']:.2f},{cv['hi']:.2f}]" if cv.get("lo") is not None and cv.get("hi") is not None else ""
    return f"{cv['value']:.2f}{ci}\np {_fp(cv['p'])}{'*' if cv.get('p_method') == 'monte carlo' else ''}"


_MC_NOTE = ("* p by Monte Carlo over tables with the same margins: too many expected counts < 5 for the χ² "
            "approximation. V is bias-corrected (Bergsma 2013): the plain V of small groups reads high by chance")


def _none_if_na(v):
    """A manifest value for JSON: None where missing, else the value as text."""
    return None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(v)


def _differ(a, b) -> bool:
    """Two known values (ids or labels of a near-duplicate pair, as text) that are not the same."""
    return a is not None and b is not None and a != b


def _pair_notes(p: dict, nd: dict) -> str:
    """" · patientid 178 ≠ 97 · labels COVID-19 ≠ 'COVID-19, ARDS'" for a near-duplicate pair that disagrees."""
    out = ""
    if nd.get("id_col") and _differ(p.get("id_a"), p.get("id_b")):
        out += f" · {nd['id_col']} {p['id_a']} ≠ {p['id_b']}"
    if _differ(p.get("label_a"), p.get("label_b")):
        out += f" · labels {_lab(p['label_a'])} ≠ {_lab(p['label_b'])}"
    return out


def _lab(label) -> str:
    """A class label as printed in a comma-separated list: quoted when it holds a comma itself."""
    s = str(label)
    return repr(s) if "," in s else s


def _in_split(split: str, nd: dict) -> str:
    return "" if nd["scope"].endswith("(no splits)") else f" ({split})"


def scan_renderable(s: dict, out_dir: str | None = None, max_rows: int = 12):
    """A rich Group of the scan's tables (reads scan.json's dict; recomputes nothing)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    d = s["data"]
    parts = [Text.assemble(("Dataset scan ", "bold"), f"· {d['n_scanned']} of {d['n_rows']} images",
                           (f" · skipped {d['n_skipped']} unreadable (errors.csv)" if d["n_skipped"] else ""),
                           " · labels " + ", ".join(f"{_lab(k)} {v}" for k, v in d["label_counts"].items()))]
    min_n = s["options"]["min_n"]
    big = [c for c in d["classes"] if d["label_counts"][c] >= min_n]
    classes = big[:6]
    hidden = [c for c in d["classes"] if c not in classes]
    t = Table(title="Artifact prevalence (95% Wilson CI, %)", title_justify="left", pad_edge=False,
              box=box.SIMPLE_HEAD, padding=(0, 1))
    # two lines a row: the estimate over its CI, the artifact over its source (detector, file, flag)
    for c, j in (("artifact", "left"), ("present", "right"), ("overall", "right"),
                 *((f"{c}", "right") for c in classes), ("Cramér's V", "right")):
        t.add_column(c, justify=j, no_wrap=c == "artifact", min_width=9 if c not in ("artifact", "present") else None)
    for a, e in s["artifacts"].items():
        t.add_row(Text.assemble(a, "\n", (e["source"], "dim")), f"{e['n_present']}/{e['n_known']}",
                  _fe(e["prevalence"]), *(_fe(e["by_label"].get(c)) for c in classes),
                  _fv(e["label_association"]))
    parts.append(t)
    if any(e["label_association"].get("p_method") == "monte carlo" for e in s["artifacts"].values()):
        parts.append(Text(_MC_NOTE, style="dim"))
    if hidden:
        parts.append(Text(f"labels not shown as columns: {', '.join(map(_lab, hidden[:8]))}"
                          f"{' …' if len(hidden) > 8 else ''}"
                          f" (n < {min_n} or beyond 6 columns; all of them are in scan.json)", style="dim"))
    assoc = [e for e in s["associations"] if not e["too_small"] and e["odds_ratio"]["value"] is not None]
    if assoc:
        t = Table(title="Label associations, strongest first (odds ratio, 95% CI, Fisher exact p)",
                  title_justify="left", pad_edge=False)
        for c, j in (("artifact", "left"), ("class", "left"), ("vs", "left"), ("in class", "right"),
                     ("in other", "right"), ("OR [95% CI]", "right"), ("p", "right")):
            t.add_column(c, justify=j, no_wrap=True)
        for e in assoc[:max_rows]:
            o = e["odds_ratio"]
            strong = o["lo"] is not None and (o["lo"] > 1 or o["hi"] < 1)
            t.add_row(Text(e["artifact"]), Text(e["class"]), Text(e["vs"]),
                      f"{_pct(e['prevalence_class'])} of {e['n_class']}",
                      f"{_pct(e['prevalence_rest'])} of {e['n_rest']}",
                      f"{_fmt_or(o['value'])} [{_fmt_or(o['lo'])}, {_fmt_or(o['hi'])}]", _fp(o["p"]),
                      style="bold red" if strong else "")
        parts.append(t)
        parts.append(Text("\n".join("• " + e["text"] for e in assoc[:3])))
    small = [e for e in s["associations"] if e["too_small"]]
    if small:
        per_art: dict = {}
        for e in small:
            per_art.setdefault(e["artifact"], []).append(e["class"])
        which = "; ".join(f"{a}: {', '.join(map(_lab, sorted(cs)))}" for a, cs in per_art.items())
        parts.append(Text(f"{len(small)} class comparison(s) too small (< {s['options']['min_n']} images in the "
                          f"class or in the rest, of those whose artifact is known): {which}", style="dim"))
    parts += _format_renderables(s.get("format"), classes, max_levels=6)
    from .dicom import device_renderables
    parts += device_renderables(s, classes)
    for col, per_a in (s.get("by") or {}).items():
        # groups as rows (a metadata column can have many values), largest first; artifacts as columns
        sizes: dict = {}
        for e in per_a.values():
            for g, est in e["groups"].items():
                sizes[g] = max(sizes.get(g, 0), int((est or {}).get("n") or 0))
        groups = sorted(sizes, key=lambda g: (-sizes[g], str(g)))
        shown = groups[:max_rows]
        t = Table(title=f"Prevalence by {col}", title_justify="left", pad_edge=False, box=box.SIMPLE_HEAD,
                  padding=(0, 1))
        t.add_column(col, no_wrap=True)
        t.add_column("n", justify="right")
        for a in per_a:
            t.add_column(a, justify="right", no_wrap=True)
        for g in shown:
            t.add_row(Text(str(g)), str(sizes[g]), *(_fe(e["groups"].get(g)) for e in per_a.values()))
        t.add_row(Text("Cramér's V\n(95% CI), p", style="bold"), "",
                  *(_fv(e["association"]) for e in per_a.values()))
        parts.append(t)
        if len(groups) > len(shown):
            rest = groups[len(shown):]
            parts.append(Text(f"{len(rest)} smaller {col} group(s) not shown ({sum(sizes[g] for g in rest)} images; "
                              "all in scan.json): " + ", ".join(map(str, rest)), style="dim"))
        if any(e["association"].get("p_method") == "monte carlo" for e in per_a.values()):
            parts.append(Text(_MC_NOTE, style="dim"))
    lk = s["leakage"]
    ids = lk["ids"]
    if ids.get("checked"):
        style = "bold red" if ids["n_leaking"] else "green"
        parts.append(Text(f"Split leakage by {ids['id_col']}: {ids['n_leaking']} of {ids['n_ids']} ids in more than "
                          "one split" + "".join(f"\n  {x['id']}: {', '.join(x['splits'])}" for x in ids["leaking"][:5]),
                          style=style))
    else:
        parts.append(Text(f"Split leakage by id: not checked ({ids['note']})", style="dim"))
    nd = lk["near_duplicates"]
    disagree = [f"{nd['n_different_ids']} under different {nd['id_col']}" if nd.get("n_different_ids") else "",
                f"{nd['n_different_labels']} with different labels" if nd.get("n_different_labels") else ""]
    disagree = [x for x in disagree if x]
    det = (f", confirmed by the {nd['detail_bits']}-bit detail hash ≤ {nd['detail_threshold']}"
           if nd.get("detail_bits") else "")
    unconf = (f"\n  {nd['n_unconfirmed']} more pHash candidate pair(s) share a layout but differ in detail: "
              "different images, or cropped or marked-up copies; not counted, check by eye ("
              + (f"{nd['sheet']}, " if nd.get("sheet") else "") + "near_duplicates.csv: confirmed = False)"
              if nd.get("n_unconfirmed") else "")
    parts.append(Text(f"Near-duplicate images {nd['scope']} (pHash, Hamming ≤ {nd['threshold']} of {nd['bits']} "
                      f"bits{det}): {nd['n_pairs']} pair(s)" + (f" ({'; '.join(disagree)})" if disagree else "")
                      + "".join(f"\n  {p['image_id_a']}{_in_split(p['split_a'], nd)} ~ {p['image_id_b']}"
                                f"{_in_split(p['split_b'], nd)}: Hamming {p['distance']}{_pair_notes(p, nd)}"
                                for p in nd["pairs"][:5]) + unconf,
                      style="bold red" if nd["n_pairs"] else ("yellow" if nd.get("n_unconfirmed") else "green")))
    mo = s.get("model")
    if mo:
        pos = mo["positive"]
        t = Table(title=f"Model {mo['model']} with vs without each artifact (accuracy {_fe(mo['accuracy'])})"
                  + (f"; positive class {pos}" if pos else ""), title_justify="left", pad_edge=False)
        cols = ["artifact", "stratum", "n", "accuracy"] + (["sensitivity", "specificity", f"P({pos}) negatives"]
                                                           if pos else [])
        for c in cols:
            t.add_column(c, justify="left" if c in ("artifact", "stratum") else "right", no_wrap=True)
        for a, e in mo["by_artifact"].items():
            for st in ("with", "without"):
                x = e[st]
                extra = [_fe(x["sensitivity"]), _fe(x["specificity"]), _fe(x["mean_p_positive_neg"], pct=False)] \
                    if pos else []
                t.add_row(Text(a if st == "with" else ""), st, str(x["n"]), _fe(x["accuracy"]), *extra)
        parts.append(t)
    if out_dir:
        nd, ids = s["leakage"]["near_duplicates"], s["leakage"]["ids"]
        extra = ([", errors.csv"] if d["n_skipped"] else []) \
            + ([", near_duplicates.csv"] if nd.get("n_candidates", nd.get("n_pairs")) else []) \
            + ([f", {nd['sheet']}"] if nd.get("sheet") else []) + ([", leaking_ids.csv"] if ids.get("n_leaking") else [])
        parts.append(Text(f"Files: {out_dir}/ (scan.csv, scan.json, contact_<artifact>.png{''.join(extra)})",
                          style="dim"))
    return Group(*parts)


def _format_renderables(fmt: dict | None, classes: list[str], max_levels: int = 6, title: str | None = None,
                        first_col: str = "format") -> list:
    """The image-format table (levels as rows: n, overall share, share of each shown class, the attribute's
    Cramér's V on its first row, red when its CI's lower end is above 0.1) and its plain-text lines."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from .formats import association_strong, format_text
    if not fmt:
        return []
    out: list = []
    if fmt["attributes"]:
        t = Table(title=title or "Image format by label (share of each class, 95% Wilson CI, %): a format that "
                        "follows the label can be learned instead of the anatomy", title_justify="left", pad_edge=False,
                  box=box.SIMPLE_HEAD, padding=(0, 1))
        for c, j in ((first_col, "left"), ("n", "right"), ("overall", "right"), *((c, "right") for c in classes),
                     ("Cramér's V", "right")):
            t.add_column(c, justify=j, no_wrap=c == first_col, min_width=9 if c not in (first_col, "n") else None)
        for a, e in fmt["attributes"].items():
            strong = association_strong(e["association"])
            for i, (x, lv) in enumerate(list(e["levels"].items())[:max_levels]):
                t.add_row(Text(f"{a}: {x}" if i == 0 else f"  {x}"), str(lv["n"]), _fe(lv["prevalence"]),
                          *(_fe(lv["by_label"].get(c)) for c in classes),
                          _fv(e["association"]) if i == 0 else "", style="bold red" if strong and i == 0 else "",
                          end_section=i == min(len(e["levels"]), max_levels) - 1)
        out.append(t)
        if any(e["association"].get("p_method") == "monte carlo" for e in fmt["attributes"].values()):
            out.append(Text(_MC_NOTE, style="dim"))
    out += [Text(line, style="dim") for line in format_text(fmt, max_levels)]
    return out


def render_scan(result: ScanResult | dict, console=None) -> None:
    """Print the scan's rich tables (prevalence, associations, by-column prevalence, leakage, model) to console."""
    from rich.console import Console
    s = result.summary if isinstance(result, ScanResult) else result
    out = str(result.out_dir) if isinstance(result, ScanResult) else None
    (console or Console()).print(scan_renderable(s, out))
