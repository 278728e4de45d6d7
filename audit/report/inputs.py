"""Read an audit's output folder (per_image.csv, cams.npz, summary.json, config.resolved.yaml) for the reports.

Reports are a pure function of those four files plus the images (and mask files) on disk. Region masks are
re-created with `masks.build_regions(options.regions)` on the model-grid image, exactly as the audit made them.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from audit.errors import RunDirError
from audit.preprocess import InputSpec, image_to_grid, load_rgb
from audit.summary import ABSENT_REASONS, general_reason
from audit.summary_types import AuditSummary

REQUIRED = ("per_image.csv", "cams.npz", "summary.json", "config.resolved.yaml")


@dataclass
class ReportInputs:
    """Everything the report layer reads, parsed once."""

    out_dir: Path
    per_image: pd.DataFrame
    cams: np.ndarray                 # float32 N×h×w, raw Grad-CAM at layer resolution
    cam_index: dict[str, int]        # image_id → row of `cams`
    layer: str
    summary: AuditSummary | None  # None: a report that is not of a single-label audit (the multi-label one)
    config: dict
    classes: list[str]
    positive: str | None
    kinds: dict[str, str]            # region → "target" | "artifact", preset order
    region_cfg: dict                 # the preset's `regions:` mapping
    spec: InputSpec
    notes: list[str] = field(default_factory=list)
    _regions: object = None

    @property
    def options(self) -> dict:
        return self.config.get("options") or {}

    @property
    def targets(self) -> list[str]:
        return [r for r, k in self.kinds.items() if k == "target"]

    @property
    def artifacts(self) -> list[str]:
        return [r for r, k in self.kinds.items() if k == "artifact"]

    @property
    def run_name(self) -> str:
        return str((self.summary.run.name if self.summary is not None else None) or self.out_dir.name)

    def option(self, key: str, default):
        v = self.options.get(key)
        return default if v is None else v

    def region_set(self):
        """`masks.RegionSet` of the preset (None when the run had no regions or they cannot be built)."""
        if self._regions is None and self.region_cfg:
            try:
                from masks import build_regions
                self._regions = build_regions(self.region_cfg)
            except Exception as e:  # a preset that no longer builds: overlays without outlines, said so
                self.notes.append(f"region masks not drawn: options.regions does not build ({type(e).__name__}: {e})")
                self.region_cfg = {}
        return self._regions

    def load(self, row: dict) -> tuple[np.ndarray | None, dict[str, np.ndarray | None], str]:
        """(grid image uint8 S×S×3 or None, region masks, note) for one per_image row; never raises for I/O."""
        path = row.get("image")
        if not isinstance(path, str) or not path:
            return None, {}, "no image path"
        try:
            img = load_rgb(path, self.spec.scale16, dicom_window=self.spec.dicom_window)
        except FileNotFoundError:
            return None, {}, f"image not found ({path})"
        except Exception as e:  # PIL raises many types for a broken file
            return None, {}, f"image unreadable ({type(e).__name__}: {e})"
        grid = image_to_grid(img, self.spec)
        rs = self.region_set()
        masks: dict[str, np.ndarray | None] = {}
        notes = []
        if rs is not None:
            with warnings.catch_warnings():  # the audit already warned about these; a missing mask is noted below
                warnings.simplefilter("ignore")
                try:
                    res = rs.compute(grid, row, self.spec, img.shape[:2])
                except Exception as e:
                    res = {}
                    notes.append(f"regions failed ({type(e).__name__}: {e})")
            for r, rr in res.items():
                masks[r] = rr.mask
                if rr.mask is None:
                    why = general_reason(rr.note or "", str(row.get("image_id", "")))
                    if rs.kinds.get(r) == "artifact" and (rr.present is False or why.startswith(ABSENT_REASONS)):
                        continue  # the artifact is not on this image: nothing to note
                    notes.append(f"{r} missing" + (f" ({why})" if why else ""))
        return grid, masks, "; ".join(notes)


def _read_yaml(p: Path) -> dict:
    try:
        d = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RunDirError(f"{p}: cannot read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return d if isinstance(d, dict) else {}


def _positive(config: dict, summary: AuditSummary) -> str | None:
    """The positive class: --positive, else the run's positive_class, else the one the operating points name."""
    opts, run = config.get("options") or {}, config.get("run") or {}
    op = summary.operating_points
    for v in (opts.get("positive"), run.get("positive_class"), op.positive_class if op is not None else None):
        if isinstance(v, str) and v:
            return v
    return None


def _read_summary(p: Path) -> AuditSummary:
    """summary.json as an `AuditSummary`; RunDirError (one line, naming the file and the key) when it is not JSON
    or not a single-label audit's summary. Keys the schema does not know are dropped with a warning naming the
    file and the keys: the report does not show them, and a reader should know."""
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"{p}: cannot parse ({type(e).__name__}: {e})") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            summary = AuditSummary.from_json(d)
        except (ValueError, TypeError) as e:  # SummaryFormatError is a ValueError; it names the key
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            for root in ("AuditSummary: ", "AuditSummary."):
                if msg.startswith(root):
                    msg = msg[len(root):]
            raise RunDirError(f"{p}: not a single-label audit's summary ({msg}; see docs/summary_schema.md)") \
                from None
    for w in caught:
        warnings.warn(f"{p}: {w.message}", w.category, stacklevel=3)
    return summary


def _mask_column(df: pd.DataFrame, config: dict, notes: list[str]) -> pd.DataFrame:
    """per_image.csv does not keep the manifest's `mask` column; file-backed regions need it, so it is joined back
    from the manifest named in config.resolved.yaml (by image_id)."""
    if "mask" in df.columns:
        return df
    regions = (config.get("options") or {}).get("regions") or {}
    if not any(isinstance(c, dict) and c.get("source") == "file" for c in regions.values()):
        return df
    manifest = config.get("manifest") or (config.get("run") or {}).get("manifest")
    if not manifest:
        notes.append("file-backed region masks not drawn: no manifest path in config.resolved.yaml")
        return df
    try:
        from audit.manifest import DataSpec, load_manifest
        spec = DataSpec.from_dict((config.get("options") or {}).get("data_spec") or {})
        man = load_manifest(manifest, spec, require_label=False)
    except Exception as e:
        notes.append(f"file-backed region masks not drawn: manifest {manifest} unreadable ({type(e).__name__}: {e})")
        return df
    if "mask" not in man.columns or man["mask"].isna().all():
        return df
    m = man.drop_duplicates("image_id").set_index("image_id")["mask"]
    df = df.copy()
    df["mask"] = df["image_id"].astype(str).map(m)
    return df


def read_out_dir(out_dir: str | Path) -> ReportInputs:
    """Parse an audit output folder. Raises RunDirError naming the missing/unreadable file."""
    out = Path(out_dir)
    missing = [f for f in REQUIRED if not (out / f).is_file()]
    if missing:
        raise RunDirError(f"{out}: missing {', '.join(missing)} (expected the output folder of `cli.py audit`)")
    notes: list[str] = []
    try:
        df = pd.read_csv(out / "per_image.csv", dtype={"image_id": str})
    except Exception as e:
        raise RunDirError(f"{out / 'per_image.csv'}: cannot parse ({type(e).__name__}: {e})") from None
    for col in ("image_id", "label", "pred", "confidence", "correct"):
        if col not in df.columns:
            raise RunDirError(f"{out / 'per_image.csv'}: column {col!r} not found; columns are {list(df.columns)}")
    df["correct"] = df["correct"].astype(str).str.lower().isin(["true", "1", "1.0"])
    for col in ("flag_off_target", "flag_high_conf_error"):
        if col in df.columns:
            df[col] = df[col].astype(str).str.lower().isin(["true", "1", "1.0"])
    summary = _read_summary(out / "summary.json")
    config = _read_yaml(out / "config.resolved.yaml")
    try:
        with np.load(out / "cams.npz", allow_pickle=False) as z:
            ids = [str(x) for x in z["image_id"]]
            cams = np.asarray(z["cam"], dtype=np.float32)
            layer = str(z["layer"]) if "layer" in z.files else str(config.get("layer", "?"))
    except Exception as e:
        raise RunDirError(f"{out / 'cams.npz'}: cannot read ({type(e).__name__}: {e})") from None
    if cams.ndim != 3 or cams.shape[0] != len(ids):
        raise RunDirError(f"{out / 'cams.npz'}: expected cam N×h×w with N = len(image_id) = {len(ids)}, "
                          f"got shape {cams.shape}")
    run = config.get("run") or {}
    classes = [str(c) for c in (run.get("classes") or summary.run.classes or [])]
    if not classes:
        classes = sorted(c[2:] for c in df.columns if c.startswith("p_"))
    region_cfg = (config.get("options") or {}).get("regions") or {}
    kinds = {str(k): str(v) for k, v in (config.get("regions") or {}).items() if v in ("target", "artifact")}
    if not kinds and "regions" not in config:  # older config files: the summary's regions name their kinds
        kinds = {r: e.kind for r, e in summary.regions.items() if e.kind in ("target", "artifact")}
    if region_cfg and not kinds:
        try:
            from masks import build_regions
            kinds = dict(build_regions(region_cfg).kinds)
        except Exception:
            pass
    try:
        spec_d = dict(run.get("input") or {})
        for k in ("mean", "std"):
            if k in spec_d:
                spec_d[k] = tuple(spec_d[k])
        spec = InputSpec(**spec_d)
    except Exception as e:
        raise RunDirError(f"{out / 'config.resolved.yaml'}: run.input is not a valid input spec ({e})") from None
    df = _mask_column(df, config, notes)
    return ReportInputs(out_dir=out, per_image=df, cams=cams, cam_index={k: i for i, k in enumerate(ids)},
                        layer=layer, summary=summary, config=config, classes=classes,
                        positive=_positive(config, summary), kinds=kinds, region_cfg=dict(region_cfg), spec=spec,
                        notes=notes)


def fnum(v) -> float:
    """A per_image cell as float (NaN for missing/unparseable)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f
