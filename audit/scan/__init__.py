"""Dataset scan: artifact prevalence, label association and split leakage, before any model is trained.

`run_scan(preset, manifest, out_dir, spec, config)` (config: a `ScanConfig`, or its options as keywords) runs the
preset's artifact regions (detectors such as ink, ruler, dark_corners, text; `source: file` regions such as the V7
`device` mask) and optional 0/1 metadata flag columns over every image, in DataLoader workers, and reports:

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
scan.json (strict JSON, NaN → null, `schema_version`, `options`: every option as resolved),
contact_<artifact>.png (the top-scoring images per artifact, the region outlined), near_duplicates.csv and leaking_ids.csv (when any), errors.csv (unreadable
images, skipped and counted); an interrupted scan leaves scan.partial.csv (the rows scanned until then).
`render_scan(result, console)` prints the rich tables.
"""
from __future__ import annotations

from ..association import cramers_v, odds_ratio_2x2
from .config import ScanConfig
from .core import MAX_JSON_PAIRS, SCHEMA_VERSION, ScanResult, run_scan, scan_input_spec
from .hashing import DETAIL_BITS, DETAIL_THRESHOLD, PHASH_BITS, detail_hash_images, hamming, near_duplicate_pairs, phash_images
from .prepare import prepare_scan
from .render import render_scan, scan_renderable

__all__ = ["ScanConfig", "ScanResult", "run_scan", "render_scan", "scan_renderable", "prepare_scan",
           "scan_input_spec", "phash_images", "detail_hash_images", "hamming", "near_duplicate_pairs", "odds_ratio_2x2", "cramers_v",
           "SCHEMA_VERSION", "PHASH_BITS", "DETAIL_BITS", "DETAIL_THRESHOLD", "MAX_JSON_PAIRS"]
