"""The scan's pass (`run_scan`): detectors and flag columns over every image in DataLoader workers, prevalence,
label association, split leakage and, with a run dir, the model with vs without each artifact. The package's
docstring (`audit.scan`) describes the outputs."""
from __future__ import annotations

import heapq
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..association import by_table, cramers_v, model_by_artifact, one_vs_rest, association_strength, prevalence
from ..errors import ConfigError, ManifestError, UndefinedMetricWarning
from ..formats import format_by_label
from ..preprocess import InputSpec, scale16_value
from ..stats import group_keys
from ..stream import Progress, stream_batches, write_errors
from .config import ScanConfig
from .hashing import (DETAIL_BITS, DETAIL_SIZE, PHASH_BITS, PHASH_SIZE, detail_hash_images, near_duplicate_pairs,
                      phash_images)

SCHEMA_VERSION = 2       # 2: Cramér's `value` is bias-corrected (1: the plain V); near_duplicates lists confirmed pairs
PAIR_SHEET_PAIRS = 16    # near-duplicate pairs drawn in near_duplicates.png
MAX_JSON_PAIRS = 1000    # near-duplicate pairs / leaking ids listed in scan.json (all of them in the CSVs)
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
    from ..run import INPUT_KEYS
    unknown = [str(k) for k in inp if k not in INPUT_KEYS and k not in PRESET_INPUT_KEYS]
    if unknown:
        raise ConfigError(f"input: unknown key(s) {unknown}; expected some of {list(PRESET_INPUT_KEYS)}")
    model_only = [str(k) for k in inp if k not in PRESET_INPUT_KEYS]
    if model_only:  # accepted and ignored, they would look as if they changed something
        raise ConfigError(f"input: {model_only} belong to the run's config.yaml (the model's own preprocessing); "
                          f"a preset's input sets the grid of scan and masks: {list(PRESET_INPUT_KEYS)}")
    from ..dicom import fields_for_regions
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


def _none_if_na(v):
    """A manifest value for JSON: None where missing, else the value as text."""
    return None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(v)


def differ(a, b) -> bool:
    """Two known values (ids or labels of a near-duplicate pair, as text) that are not the same."""
    return a is not None and b is not None and a != b


# ================================================================================================ run_scan

def run_scan(preset: dict, manifest: pd.DataFrame, out_dir: Path, spec: InputSpec, config: ScanConfig | None = None,
             *, run_dir: str | None = None, progress: Progress | None = None, **options: Any) -> ScanResult:
    """Scan a dataset for artifacts, their association with the label, and split leakage (no model needed).

    preset: a parsed preset (`audit.config.load_preset`): its artifact `regions:` are scanned (detectors and
      `source: file` regions; geometric bands such as border/corners are skipped, having nothing to detect).
      manifest: canonical rows (`audit.manifest.load_manifest`); needs a label column.
    out_dir: folder for scan.csv, scan.json, contact_<artifact>.png, errors.csv, near_duplicates.csv,
      leaking_ids.csv. spec: the grid the detectors (and the pHash) see, e.g. `scan_input_spec(preset)`.
    config: the options, resolved (`ScanConfig.resolve(preset, **options)`: explicit > the preset's `scan:`
      section > defaults; audit/scan/config.py documents each). None: resolved here from `options` (by, id_col,
      flag_cols, positive, workers, limit, phash_threshold, detail_threshold, min_n, top_k, alpha, batch_size,
      device, n_boot, seed); not both.
    run_dir: a training run (`audit.run.load_run`): adds the model's metrics with vs without each artifact; the
      positive class is then `positive`, else the run's positive_class, else the preset's audit.positive (for a
      binary label without one, the minority class is compared with the other).
    progress: called as progress(done, total) after each batch.
    scan.json's `options` holds every resolved option (`ScanConfig.to_dict()`, with the positive class used).
    Raises ManifestError / ConfigError / RunDirError with one line for bad input (TypeError for an unknown
    option); unreadable images are skipped, counted and listed in errors.csv. Returns a ScanResult.
    """
    t0 = time.perf_counter()
    if config is not None and options:
        raise TypeError(f"run_scan(): options {sorted(options)} given with a config; pass one or the other")
    if config is not None and not isinstance(config, ScanConfig):
        raise TypeError(f"run_scan(): config: expected a ScanConfig or None, got {type(config).__name__}")
    preset = dict(preset or {})
    cfg = config if config is not None else ScanConfig.resolve(preset, **options)
    plan = _plan(preset, manifest, cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if run_dir is not None:  # loaded before the pass, so that a bad run dir fails before any work
        _load_model(plan, preset, run_dir, cfg, spec)
    else:
        _check_positive(plan, preset, cfg)

    # --- the streaming pass: detectors, flags, hashes (and the model, on the same grid) per image
    from ..data import make_loader
    collector = _Collector(plan, cfg)
    loader = make_loader(plan.rows, spec, cfg.batch_size, cfg.workers,
                         plan.regions.compute if len(plan.regions) else None)
    streamed = stream_batches(loader, plan.rows, collector.on_batch, progress=progress,
                              partial=out_dir / "scan.partial.csv")
    errors = [f[1:] for f in streamed.failures]   # ScanResult.errors: (image_id, image, reason)
    t_pass = time.perf_counter() - t0
    if not streamed.frames:
        raise ManifestError(f"manifest: none of the {len(plan.rows)} images could be read "
                            f"(first error: {errors[0][2] if errors else 'none'})")
    per_image = streamed.table()
    for a in plan.sources:
        per_image[f"present_{a}"] = per_image[f"present_{a}"].astype("boolean")
    classes_run = _predictions(plan, collector, per_image, cfg)

    # --- the analyses after the pass
    lab_all = per_image["label"]
    labelled = lab_all.notna().to_numpy()
    classes = sorted(lab_all[labelled].astype(str).unique().tolist())
    artifacts, associations, undefined = _label_association(per_image, plan.sources, classes, plan.positive, cfg)
    by_out = _by_tables(per_image, plan.sources, cfg)
    fmt = format_by_label(per_image, classes, cfg.min_n, cfg.alpha, cfg.n_boot, cfg.seed)
    from ..dicom_bias import device_by_label
    device = device_by_label(per_image, classes, cfg.min_n, cfg.alpha, cfg.n_boot, cfg.seed)  # DICOM headers
    h, hd_all = collector.hash_arrays()
    leakage = _leakage(plan.rows, per_image, h, hd_all, cfg.id_col, cfg.phash_threshold, cfg.detail_threshold,
                       out_dir)
    model_out = _model_metrics(plan, per_image, device, classes_run, cfg) if plan.run is not None else None

    # --- files
    sheets = _write_files(out_dir, collector, per_image, device, classes, streamed.failures)
    sections = {"artifacts": artifacts, "skipped_regions": plan.skipped, "associations": associations,
                "by": by_out, "format": fmt, **({"device": device} if device else {}), "leakage": leakage,
                "model": model_out, "contact_sheets": sheets}
    summary = _summary(plan, cfg, spec, run_dir, per_image, classes, len(errors), sections, collector.n_warn,
                       {"total_s": time.perf_counter() - t0, "scan_pass_s": t_pass,
                        "images_per_s": len(plan.rows) / max(t_pass, 1e-9)})
    if undefined:
        warnings.warn(f"scan: undefined (NaN): {', '.join(undefined[:10])}"
                      f"{' …' if len(undefined) > 10 else ''} (artifact never or always present)",
                      UndefinedMetricWarning, stacklevel=2)
    (out_dir / "scan.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    return ScanResult(per_image=per_image, summary=summary, out_dir=out_dir, errors=errors)


# ------------------------------------------------------------------------------------------------ before the pass

@dataclass
class _Plan:
    """What the scan runs, decided before the pass: the rows (first `limit`, index 0..N-1), the scanned regions
    and {artifact: "detector" | "file" | "flag"}, the flag columns' values, the positive class and the model."""

    rows: pd.DataFrame
    regions: Any  # masks.registry.RegionSet of the scanned artifact regions
    sources: dict[str, str]
    skipped: dict[str, str]
    flags: dict[str, pd.Series]
    positive: str | None = None
    model: torch.nn.Module | None = None
    run: Any = None  # audit.run.Run
    dev: torch.device | None = None
    in_loop: bool = False  # the model predicts in the scan's own pass (its grid is the scan's)


def _plan(preset: Mapping, manifest: pd.DataFrame, cfg: ScanConfig) -> _Plan:
    """The rows and regions to scan; ManifestError / ConfigError for a column or region that cannot be."""
    from ..dicom import PATIENT_HASH, add_patient_hash
    if cfg.id_col == PATIENT_HASH and PATIENT_HASH not in manifest.columns:  # salted PatientID hash for leakage
        try:
            manifest = add_patient_hash(manifest)
        except ValueError as e:
            raise ConfigError(f"id_col {PATIENT_HASH}: {e}", param="id_col") from None
    cfg.check_manifest(manifest)
    rs, sources, skipped = _artifact_plan(preset, cfg.flag_cols)
    if not sources:
        raise ConfigError("scan: nothing to scan: the preset has no artifact detector or file region, and no "
                          "--flag-cols were given")
    rows = manifest if cfg.limit is None else manifest.iloc[:cfg.limit]
    rows = rows.reset_index(drop=True)
    flags = {c: _parse_flags(rows[c], c) for c in cfg.flag_cols}
    return _Plan(rows=rows, regions=rs, sources=sources, skipped=skipped, flags=flags)


def _load_model(plan: _Plan, preset: Mapping, run_dir: str, cfg: ScanConfig, spec: InputSpec) -> None:
    """Load the run onto cfg.device and set plan.model, run, dev, positive and in_loop (same grid → same pass)."""
    from ..predict import resolve_device
    from ..run import load_run
    model, run = load_run(run_dir)
    dev = resolve_device(cfg.device)
    rows = plan.rows
    bad = ~rows["label"].isna() & ~rows["label"].isin(run.classes)
    if bad.any():
        i = int(bad.to_numpy().argmax())
        raise ManifestError(f"manifest: label {rows['label'].iloc[i]!r} (row {i + 2}) is not among the run's "
                            f"classes {run.classes}")
    positive = cfg.positive or run.positive_class or (preset.get("audit") or {}).get("positive")
    if positive is not None and positive not in run.classes:
        raise ConfigError(f"positive {positive!r}: not among the run's classes {run.classes}", param="positive")
    geom = (run.input.size, run.input.resize, run.input.crop_pct, run.input.interpolation, run.input.scale16,
            run.input.dicom_window)
    plan.in_loop = geom == (spec.size, spec.resize, spec.crop_pct, spec.interpolation, spec.scale16,
                            spec.dicom_window)
    plan.model, plan.run, plan.dev, plan.positive = model.to(dev), run, dev, positive


def _check_positive(plan: _Plan, preset: Mapping, cfg: ScanConfig) -> None:
    """Without a model: plan.positive = the option, else the preset's audit.positive; it must be a label."""
    positive = cfg.positive or (preset.get("audit") or {}).get("positive")
    labels_seen = set(plan.rows["label"].dropna().astype(str))
    if positive is not None and positive not in labels_seen:
        raise ConfigError(f"positive {positive!r}: not among the labels {sorted(labels_seen)}", param="positive")
    plan.positive = positive


# ------------------------------------------------------------------------------------------------ the pass

class _Collector:
    """The streaming pass: `on_batch(batch)` → the batch's scan.csv rows; keeps each image's pHash (64 bits) and
    detail hash (256 bits), the in-pass class probabilities and the top_k contact-sheet thumbnails per artifact."""

    def __init__(self, plan: _Plan, cfg: ScanConfig) -> None:
        from masks.export import PALETTE
        self.plan, self.cfg = plan, cfg
        self.recs = plan.rows.to_dict("records")
        self.colors = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(plan.sources)}
        self.heaps: dict[str, list] = {a: [] for a in plan.sources}
        self.hashes: list = []
        self.details: list = []
        self.probs_rows: list[tuple[int, np.ndarray]] = []  # (row, P (C,)) predicted in the pass
        self.row_pos: list[int] = []  # the row of each scanned image, in streaming order
        self.n_warn = self.n_rec = 0

    def on_batch(self, batch) -> pd.DataFrame:
        hs = phash_images(batch.img)
        hd = detail_hash_images(batch.img)
        pr = self._probs(batch) if self.plan.in_loop else None
        batch_records = []
        for j, i in enumerate(batch.idx):
            rec = self._record(batch, j, i, hs[j], hd[j])
            if pr is not None:
                self.probs_rows.append((i, pr[j]))
            self._offer_thumbnails(batch, j, rec)
            batch_records.append(rec)
            self.n_rec += 1
            self.row_pos.append(i)
            self.hashes.append(hs[j])
            self.details.append(hd[j])
        return pd.DataFrame.from_records(batch_records)

    def _probs(self, batch) -> np.ndarray:
        """Softmax of the model on the batch's grid images: (B, C)."""
        from ..preprocess import normalize
        run = self.plan.run
        with torch.no_grad():
            return torch.softmax(self.plan.model(normalize(batch.img.to(self.plan.dev), run.input)).float(),
                                 1).cpu().numpy()

    def _record(self, batch, j: int, i: int, h, hd) -> dict:
        """Image j of the batch (manifest row i) as its scan.csv row: scores and presence per artifact."""
        from ..data import with_row
        cfg, sources = self.cfg, self.plan.sources
        r = self.recs[i]
        rec = {"image_id": r["image_id"], "image": r["image"], "label": r["label"], "split": r["split"]}
        for c in [cfg.id_col, *cfg.by]:
            if c is not None and c not in rec and c in r:  # a dicom_ column comes from the header
                rec[c] = r[c]
        rec.update(batch.source_columns(j))
        rec["phash"] = f"{int(h):016x}"
        rec["phash256"] = "".join(f"{int(x):016x}" for x in hd)
        masks = batch.masks[j] if batch.masks is not None else {}
        self.n_warn += len(batch.warnings[j]) if batch.warnings is not None else 0
        found = batch.region_columns(j)
        for a in self.plan.regions.names:
            pres = found.get(f"present_{a}")  # a file region's presence is what its file says
            if sources[a] == "file":  # a file region's score: the share of the grid its mask covers
                score = float(masks[a].float().mean()) if a in masks else (0.0 if pres is False else NAN)
            else:
                score = found.get(f"score_{a}", NAN)
            rec[f"score_{a}"], rec[f"present_{a}"] = score, pres
        for c in cfg.flag_cols:
            v = self.plan.flags[c].iloc[i]
            rec[f"score_{c}"] = NAN if v is pd.NA else float(bool(v))
            rec[f"present_{c}"] = None if v is pd.NA else bool(v)
        if "region_notes" in found:
            rec["region_notes"] = found["region_notes"]
        # the manifest's metadata after the scan's own columns; a scanned flag column keeps its raw value
        with_row(rec, r, skip=[c for c in r if f"present_{c}" in rec and c not in cfg.flag_cols])
        return rec

    def _offer_thumbnails(self, batch, j: int, rec: dict) -> None:
        """Keep the top_k scores per artifact (ties: the earlier image); thumbnails made only for entrants."""
        from masks.export import THUMB, overlay
        from masks.registry import RegionResult
        top_k = self.cfg.top_k
        masks = batch.masks[j] if batch.masks is not None else {}
        for a in self.plan.sources:
            s = rec[f"score_{a}"]
            if top_k == 0 or s is None or not np.isfinite(s):
                continue
            key = (float(s), -self.n_rec)
            hp = self.heaps[a]
            if len(hp) < top_k or key > hp[0][:2]:
                grid = batch.img[j].numpy()
                m = masks.get(a)
                ov = overlay(grid, {a: RegionResult(m.numpy() if m is not None else None)}, self.colors)
                th = Image.fromarray(ov).resize((THUMB, THUMB), Image.BILINEAR)
                cap = f"{'*' if rec[f'present_{a}'] else ' '}{s:.3g} {rec['image_id']}"
                item = (key[0], key[1], cap, th)
                if len(hp) < top_k:
                    heapq.heappush(hp, item)
                else:
                    heapq.heapreplace(hp, item)

    def hash_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(pHashes (N,) uint64, detail hashes (N, 4) uint64) of the scanned images, in scan.csv's order."""
        h = np.array(self.hashes, dtype=np.uint64)
        return h, np.array(self.details, dtype=np.uint64).reshape(len(self.details), DETAIL_BITS // 64)


# ------------------------------------------------------------------------------------------------ after the pass

def _predictions(plan: _Plan, collector: _Collector, per_image: pd.DataFrame, cfg: ScanConfig) -> list[str] | None:
    """With a model: add pred, confidence, correct and p_<class> to per_image (in place); the run's classes."""
    if plan.run is None:
        return None
    run, classes_run = plan.run, list(plan.run.classes)
    if plan.in_loop:
        P = np.full((len(plan.rows), len(classes_run)), np.nan)
        for i, p in collector.probs_rows:
            P[i] = p
    else:
        from ..predict import predict_probs
        P = predict_probs(plan.model, plan.rows, run.input, plan.dev, cfg.batch_size, cfg.workers)
    plan.model.cpu()
    Pi = P[np.asarray(collector.row_pos, dtype=np.int64)]
    valid = np.isfinite(Pi).all(1)
    per_image["pred"] = pd.array([classes_run[int(k)] if v else pd.NA
                                  for k, v in zip(np.nan_to_num(Pi).argmax(1), valid)], dtype="object")
    per_image["confidence"] = np.where(valid, np.nan_to_num(Pi).max(1), np.nan)
    per_image["correct"] = pd.array([(l == p) if p is not pd.NA and l is not pd.NA and not pd.isna(l) else pd.NA
                                     for l, p in zip(per_image["label"], per_image["pred"])], dtype="boolean")
    for k, c in enumerate(classes_run):
        per_image[f"p_{c}"] = Pi[:, k]
    return classes_run


def _label_association(per_image: pd.DataFrame, sources: Mapping[str, str], classes: list[str],
                       positive: str | None, cfg: ScanConfig) -> tuple[dict, list[dict], list[str]]:
    """Per artifact its prevalence (overall and by label) and Cramér's V with the label; the one-vs-rest odds
    ratios ranked strongest first; the names of the undefined (NaN) figures."""
    lab_all = per_image["label"]
    labelled = lab_all.notna().to_numpy()
    lab = lab_all.astype(object).where(lab_all.notna(), None).to_numpy()
    min_n, alpha = cfg.min_n, cfg.alpha
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
        by_label = {c: prevalence(int(pl[labs == c].sum()), int((labs == c).sum()), min_n, alpha) for c in classes}
        cv = cramers_v([[int((pl & (labs == c)).sum()), int((~pl & (labs == c)).sum())] for c in classes],
                       seed=cfg.seed, n_boot=cfg.n_boot, alpha=alpha)
        if not np.isfinite(cv["value"]):
            undefined.append(f"cramers_v[{a}]")
        scores = per_image[f"score_{a}"].to_numpy(dtype=np.float64)
        artifacts[a] = {"source": src, "n_known": n_all, "n_present": k_all, "n_unknown": int(len(known) - n_all),
                        "prevalence": prevalence(k_all, n_all, min_n, alpha), "by_label": by_label,
                        "label_association": cv,
                        "score_median": float(np.nanmedian(scores)) if np.isfinite(scores).any() else NAN}
        assoc = one_vs_rest(labs, pl, a, classes, positive, min_n, alpha)
        undefined += [f"odds_ratio[{e['artifact']}, {e['class']}]" for e in assoc
                      if not e["too_small"] and not np.isfinite(e["odds_ratio"]["value"])]
        associations += assoc
    associations.sort(key=association_strength)
    for rank, e in enumerate(associations, 1):
        e["rank"] = rank
    return artifacts, associations, undefined


def _by_tables(per_image: pd.DataFrame, sources: Mapping[str, str], cfg: ScanConfig) -> dict[str, dict]:
    """{by column: {artifact: {groups: prevalence per group, association: Cramér's V}}}."""
    by_out: dict[str, dict] = {}
    for col in cfg.by:
        keys = group_keys(per_image[col]).to_numpy()
        by_out[col] = {}
        for a in sources:
            pres_s = per_image[f"present_{a}"]
            known = pres_s.notna().to_numpy()
            prev, cv = by_table(keys[known], pres_s.fillna(False).to_numpy(dtype=bool)[known], cfg.min_n, cfg.alpha,
                                cfg.n_boot, cfg.seed)
            by_out[col][a] = {"groups": prev, "association": cv}
    return by_out


def _model_metrics(plan: _Plan, per_image: pd.DataFrame, device: dict, classes_run: list[str] | None,
                   cfg: ScanConfig) -> dict:
    """scan.json's `model`: accuracy, and the metrics with vs without each artifact (and device level)."""
    from ..dicom_bias import model_by_device
    run, positive, min_n, alpha = plan.run, plan.positive, cfg.min_n, cfg.alpha
    model_out = {"run_dir": str(run.run_dir) if run.run_dir else None, "model": f"{run.source}:{run.model_name}",
                 "classes": classes_run, "positive": positive, "input": run.input.to_dict(),
                 "inference": "same pass as the scan" if plan.in_loop else "separate pass (the run's input spec)",
                 "accuracy": prevalence(int(per_image["correct"].fillna(False).sum()),
                                        int(per_image["correct"].notna().sum()), min_n, alpha),
                 "by_artifact": model_by_artifact(per_image, list(plan.sources), positive, min_n, alpha, cfg.n_boot,
                                                  cfg.seed),
                 "reference": "Winkler et al. 2019, JAMA Dermatol 155(10):1135-1141"}
    if device:
        model_out["by_device"] = model_by_device(per_image, device, positive, min_n, alpha, cfg.n_boot, cfg.seed)
    return model_out


def _write_files(out_dir: Path, collector: _Collector, per_image: pd.DataFrame, device: dict, classes: list[str],
                 failures: list) -> dict[str, str]:
    """contact_<artifact>.png, scan.csv, device_bias.md (DICOM headers) and errors.csv; {artifact: sheet file}."""
    from masks.export import contact_sheet

    from ..dicom_bias import device_markdown
    sheets = {}
    for a, hp in collector.heaps.items():
        if not hp:
            continue
        items = sorted(hp, key=lambda t: (-t[0], -t[1]))
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in a)
        contact_sheet([(t[2], t[3]) for t in items], {a: collector.colors[a]}).save(out_dir / f"contact_{safe}.png")
        sheets[a] = f"contact_{safe}.png"
    per_image.to_csv(out_dir / "scan.csv", index=False)
    if device:
        (out_dir / "device_bias.md").write_text(device_markdown(device, classes))
    write_errors(out_dir / "errors.csv", failures)
    return sheets


def _summary(plan: _Plan, cfg: ScanConfig, spec: InputSpec, run_dir: str | None, per_image: pd.DataFrame,
             classes: list[str], n_skipped: int, sections: dict, n_warn: int, timing: dict) -> dict:
    """scan.json's dict (strict-JSON values): data, options, methods, then `sections` in order."""
    from .._version import package_versions
    from ..summary_types import jsonable
    lab_all = per_image["label"]
    labelled = lab_all.notna().to_numpy()
    label_counts = {c: int((lab_all[labelled].astype(str) == c).sum()) for c in classes}
    summary = {
        "schema_version": SCHEMA_VERSION,
        "data": {"n_rows": len(plan.rows), "n_scanned": len(per_image), "n_skipped": n_skipped,
                 "n_unlabelled": int((~labelled).sum()), "classes": classes, "label_counts": label_counts,
                 "splits": sorted(per_image["split"].dropna().astype(str).unique().tolist()),
                 "input": spec.to_dict()},
        # every option as resolved once (ScanConfig's fields; positive: the class used), the hashes' widths, the run
        "options": {**cfg.to_dict(), "positive": plan.positive, "phash_bits": PHASH_BITS, "detail_bits": DETAIL_BITS,
                    "run_dir": run_dir},
        "methods": {
            "prevalence": "Wilson score 95% CI; groups with n < min_n are too small (value null)",
            "odds_ratio": "one class vs the rest (binary label: positive/minority class vs the other); Woolf logit "
                          "CI, Haldane-Anscombe +0.5 to every cell when one is zero; Fisher exact two-sided p",
            "association": "Pearson chi-square without continuity correction; Cramér's V bias-corrected "
                           "(Bergsma 2013; `uncorrected`: sqrt(chi2/(n(min(r,c)-1)))) with a percentile bootstrap "
                           f"CI ({cfg.n_boot} multinomial tables, seeded); p by Monte Carlo (4000 tables, same "
                           "margins) when > 20% of expected counts < 5",
            "ranking": "strongest first: the CI bound nearer OR = 1 on the log scale, then |log OR|",
            "phash": f"64-bit DCT pHash of the {PHASH_SIZE}x{PHASH_SIZE} grayscale model-grid image; a candidate "
                     f"near-duplicate pair when Hamming distance <= {cfg.phash_threshold} of 64 bits, confirmed "
                     f"when the 256-bit DCT hash of the {DETAIL_SIZE}x{DETAIL_SIZE} image differs in <= "
                     f"{cfg.detail_threshold} of 256 bits"},
        **sections,
        "timing": timing, "n_mask_warnings": n_warn, "versions": package_versions(),
    }
    return jsonable(summary)


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
                              "n_different_ids": (sum(differ(p["id_a"], p["id_b"]) for p in lst)
                                                  if pid is not None else None),
                              "n_different_labels": sum(differ(p["label_a"], p["label_b"]) for p in lst),
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

    from ..preprocess import load_rgb
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
