"""One typed config for a scan (`ScanConfig`), resolved once: explicit arguments (CLI / API) > the preset's `scan:`
section > defaults, and validated in one place. scan.json carries it under `options`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..errors import ConfigError, ManifestError
from .hashing import DETAIL_BITS, DETAIL_THRESHOLD, PHASH_BITS

SCAN_KEYS = ("flag_cols", "by", "id_col", "min_n", "top_k")  # the keys a preset's `scan:` section may set
INT_OPTIONS = {"min_n": 1, "top_k": 0}  # smallest value of each integer option (top_k 0: no contact sheets)


@dataclass
class ScanConfig:
    """Options of a scan: `audit.scan.run_scan(..., **options)`, `audit.scan(...)` and `cli.py scan`.

    Validated on construction: a bad value raises ConfigError (a ValueError) naming the parameter, e.g.
    "top_k: expected an integer ≥ 0, got -1"; its `.param` is the field name. `ScanConfig.resolve` merges the
    explicit options over the preset's `scan:` section over these defaults."""

    by: list[str] = field(default_factory=list)  # metadata columns to tabulate prevalence by (site, view)
    id_col: str | None = None  # patient / lesion id column for split leakage
    flag_cols: list[str] = field(default_factory=list)  # 0/1 metadata columns scanned as extra artifacts
    positive: str | None = None  # the safety-critical class (None: the run's positive_class, the preset's audit's)
    workers: int = 0  # DataLoader worker processes (0 = the main process)
    limit: int | None = None  # scan only the first N rows
    phash_threshold: int = 6  # near-duplicate candidate: 64-bit pHashes differ in ≤ this many bits, in [0, 64]
    detail_threshold: int = DETAIL_THRESHOLD  # candidate confirmed: 256-bit detail hashes differ in ≤ this, [0, 256]
    min_n: int = 10  # groups below it are too small (value and CI NaN)
    top_k: int = 16  # images per contact sheet (0: none)
    alpha: float = 0.05  # 1 − CI level, in (0, 1)
    batch_size: int = 32
    device: str = "cpu"  # cpu, cuda[:N] or mps (the model's, with a run dir)
    n_boot: int = 1000  # bootstrap resamples per CI
    seed: int = 0  # bootstrap seed, in [0, 2^32)

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def resolve(cls, preset: Mapping | None = None, **options: Any) -> ScanConfig:
        """Explicit `options` (None or an empty list = not given) > the preset's `scan:` section > defaults.
        Raises TypeError for an unknown option, ConfigError for a bad value."""
        unknown = [k for k in options if k not in OPTION_NAMES]
        if unknown:
            raise TypeError(f"unexpected scan option(s) {unknown}; options are {', '.join(OPTION_NAMES)}")
        merged = dict(scan_options(preset or {}))
        merged.update({k: v for k, v in options.items()
                       if v is not None and not (isinstance(v, (list, tuple)) and len(v) == 0)})
        return cls(**merged)

    def to_dict(self) -> dict:
        """Every option, JSON-safe (lists, str, int, float, None)."""
        return asdict(self)

    def check_manifest(self, manifest: pd.DataFrame) -> None:
        """The options that name columns against the manifest (a `dicom_` column may come from the headers)."""
        if not isinstance(manifest, pd.DataFrame) or "image" not in manifest.columns:
            raise ManifestError("manifest: expected a DataFrame from audit.manifest.load_manifest (column 'image')")
        if "label" not in manifest.columns or manifest["label"].notna().sum() == 0:
            raise ManifestError("manifest: no label column (map one with data.columns: {label: COL} or "
                                "--label-col COL)")
        cols = list(manifest.columns)
        for c in self.by:
            if c not in cols and not str(c).startswith("dicom_"):
                raise ManifestError(f"by column {c!r} not found; columns are {cols}", param="by")
        if self.id_col is not None and self.id_col not in cols:
            raise ManifestError(f"id_col {self.id_col!r} not found; columns are {cols}", param="id_col")
        for c in self.flag_cols:
            if c not in cols:
                raise ManifestError(f"flag_cols: column {c!r} not found; columns are {cols}", param="flag_cols")


OPTION_NAMES = tuple(f.name for f in fields(ScanConfig))


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _expect(ok: bool, param: str, what: str, v) -> None:
    if not ok:
        raise ConfigError(f"{param}: expected {what}, got {v!r}", param=param)


def _check_int_option(key: str, v) -> None:
    lo = INT_OPTIONS[key]
    _expect(_is_int(v) and v >= lo, key, "a positive integer" if lo == 1 else f"an integer ≥ {lo}", v)


def _validate(cfg: ScanConfig) -> None:
    """Every option checked: ConfigError naming the parameter; numpy integers become ints (JSON-safe)."""
    for k in ("by", "flag_cols"):
        v = getattr(cfg, k)
        _expect(isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v), k, "a list of column names", v)
        setattr(cfg, k, list(v))
    _expect(cfg.id_col is None or isinstance(cfg.id_col, str), "id_col", "a column name or None", cfg.id_col)
    _expect(cfg.positive is None or isinstance(cfg.positive, str), "positive", "a class name or None", cfg.positive)
    _expect(_is_int(cfg.phash_threshold) and 0 <= cfg.phash_threshold <= PHASH_BITS, "phash_threshold",
            f"an integer in [0, {PHASH_BITS}]", cfg.phash_threshold)
    _expect(_is_int(cfg.detail_threshold) and 0 <= cfg.detail_threshold <= DETAIL_BITS, "detail_threshold",
            f"an integer in [0, {DETAIL_BITS}]", cfg.detail_threshold)
    _expect(_is_int(cfg.workers) and cfg.workers >= 0, "workers", "an integer ≥ 0", cfg.workers)
    _expect(cfg.limit is None or (_is_int(cfg.limit) and cfg.limit >= 1), "limit", "a positive integer", cfg.limit)
    for k in INT_OPTIONS:
        _check_int_option(k, getattr(cfg, k))
    _expect(isinstance(cfg.alpha, (int, float)) and not isinstance(cfg.alpha, bool) and 0 < cfg.alpha < 1,
            "alpha", "a number in (0, 1)", cfg.alpha)
    _expect(_is_int(cfg.batch_size) and cfg.batch_size >= 1, "batch_size", "a positive integer", cfg.batch_size)
    _expect(isinstance(cfg.device, str) and (cfg.device in ("cpu", "mps") or cfg.device.startswith("cuda")),
            "device", "cpu, cuda[:N] or mps", cfg.device)
    _expect(_is_int(cfg.n_boot) and cfg.n_boot >= 1, "n_boot", "a positive integer (bootstrap resamples per CI)",
            cfg.n_boot)
    _expect(_is_int(cfg.seed) and 0 <= cfg.seed < 2 ** 32, "seed", "an integer in [0, 2^32)", cfg.seed)
    for k in ("phash_threshold", "detail_threshold", "workers", "limit", "min_n", "top_k", "batch_size", "n_boot",
              "seed"):
        if getattr(cfg, k) is not None:
            setattr(cfg, k, int(getattr(cfg, k)))
    cfg.alpha = float(cfg.alpha)


def scan_options(preset: Mapping) -> dict:
    """The preset's `scan:` section ({} when absent), every key checked: ConfigError "scan.<key>: ..." (a preset
    key, not a parameter) for an unknown key or a bad value."""
    sec = preset.get("scan") or {}
    if not isinstance(sec, Mapping):
        raise ConfigError(f"scan: expected a mapping of options, got {type(sec).__name__}")
    unknown = sorted(set(sec) - set(SCAN_KEYS))
    if unknown:
        raise ConfigError(f"scan: unknown key(s) {unknown}; expected {list(SCAN_KEYS)}")
    sec = {k: v for k, v in sec.items() if not (k in ("by", "flag_cols") and v is None)}  # `by:` left empty
    try:
        ScanConfig(**sec)
    except ConfigError as e:
        raise ConfigError(f"scan.{e}") from None
    return sec
