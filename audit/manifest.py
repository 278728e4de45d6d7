"""The data manifest: a CSV of images, labels, splits, target masks and metadata.

Canonical columns after loading (`load_manifest`):
  image_id (str), image (absolute path str), label (str or NA), split (str or NA), mask (absolute path str or NA),
  and every other column of the CSV kept as metadata.
A preset may map real layouts onto these without converting them (`DataSpec`), e.g. HAM10000's metadata CSV:
  columns {label: dx}, image_pattern "images/{image_id}.jpg", mask_pattern "masks/{image_id}_segmentation.png".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .errors import ManifestError

CANONICAL = ("image_id", "image", "label", "split", "mask")


@dataclass(frozen=True)
class DataSpec:
    """How to read a manifest. columns: canonical name → CSV column (e.g. {"label": "dx"}).

    image_pattern / mask_pattern: format strings over the row's columns, used when the column is absent
    (relative to the CSV's folder unless absolute). image_root: folder that relative paths are relative to
    (default: the CSV's folder). label_index: the labels are class indices 0..k−1 in the run's class order
    (mapped to the class names when the run's classes are known).
    """

    columns: dict = field(default_factory=dict)
    image_pattern: str | None = None
    mask_pattern: str | None = None
    image_root: str | None = None
    label_index: bool = False

    @classmethod
    def from_dict(cls, d: dict | None) -> "DataSpec":
        d = dict(d or {})
        d.pop("manifest", None)
        unknown = set(d) - {"columns", "image_pattern", "mask_pattern", "image_root", "label_index"}
        from .errors import ConfigError
        if unknown:
            raise ConfigError(f"data: unknown key(s) {sorted(unknown)}; expected columns, image_pattern, "
                              "mask_pattern, image_root, label_index, manifest")
        if not isinstance(d.get("label_index", False), bool):
            raise ConfigError(f"data.label_index: expected true or false, got {d['label_index']!r}")
        cols = d.get("columns") or {}
        if not isinstance(cols, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in cols.items()):
            raise ConfigError(f"data.columns: expected a mapping of canonical name → the CSV's column (e.g. "
                              f"{{label: dx}}), got {cols!r}")
        for k in ("image_pattern", "mask_pattern", "image_root"):
            if d.get(k) is not None and not isinstance(d[k], str):
                raise ConfigError(f"data.{k}: expected a string, got {d[k]!r}")
        return cls(columns=dict(d.get("columns") or {}), image_pattern=d.get("image_pattern"),
                   mask_pattern=d.get("mask_pattern"), image_root=d.get("image_root"),
                   label_index=bool(d.get("label_index", False)))


def _resolve(root: Path, p) -> str | None:
    if p is None or (isinstance(p, float) and pd.isna(p)) or (isinstance(p, str) and not p.strip()):
        return None
    q = Path(str(p))
    return str(q if q.is_absolute() else (root / q))


def load_manifest(csv_path: str | Path, spec: DataSpec | None = None, classes: list[str] | None = None,
                  split: str | None = None, require_label: bool = True) -> pd.DataFrame:
    """Read and validate a manifest; returns one row per image with the canonical columns first.

    split: keep only rows of that split ("all" or None keeps everything). classes: when given, every label
    must be one of them (ManifestError naming the first offending label and its row otherwise).
    Raises ManifestError naming the file and column for anything a user must fix.
    """
    spec = spec or DataSpec()
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ManifestError(f"{csv_path}: manifest not found (expected a CSV with columns image,label[,split,mask])")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=True)
    except Exception as e:  # pandas raises many types for a broken CSV
        raise ManifestError(f"{csv_path}: cannot parse CSV ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if df.empty:
        raise ManifestError(f"{csv_path}: manifest has no rows")
    if len(df.columns) == 1:  # a manifest of one column is almost always another delimiter
        head = str(df.columns[0])
        sep = next((name for ch, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")) if ch in head), None)
        if sep:
            raise ManifestError(f"{csv_path}: one column {head!r}: the file seems separated by {sep}; save it "
                                "comma-separated (columns image,label[,split,mask])")
    for canon, src in spec.columns.items():
        if canon not in CANONICAL:
            raise ManifestError(f"{csv_path}: data.columns maps unknown field {canon!r}; expected one of {CANONICAL}")
        if src not in df.columns and canon in df.columns and canon != src:
            continue  # a manifest already in the canonical layout (image, label, ...) under a preset that maps
            #           its own dataset's names (HAM10000: dx -> label): the canonical column is used as it is
        if src not in df.columns:
            raise ManifestError(f"{csv_path}: column {src!r} (mapped to {canon!r}) not found; "
                                f"columns are {list(df.columns)}")
        if canon in df.columns and canon != src:
            df = df.rename(columns={canon: f"{canon}_orig"})
        df[canon] = df[src]
    root = csv_path.parent  # relative paths in the manifest are relative to the manifest's folder
    if spec.image_root:  # or to data.image_root, itself relative to that folder unless absolute
        root = Path(spec.image_root) if Path(spec.image_root).is_absolute() else csv_path.parent / spec.image_root
    row_dicts = None
    if "image_id" not in df.columns and "image" in df.columns and (spec.mask_pattern or spec.image_pattern):
        df["image_id"] = [Path(str(p)).stem if isinstance(p, str) else p for p in df["image"]]  # for the patterns
    if "image" not in df.columns:
        if not spec.image_pattern:
            raise ManifestError(f"{csv_path}: missing column 'image' (and no data.image_pattern to build it)")
        row_dicts = df.to_dict("records")
        df["image"] = [_fmt(spec.image_pattern, r, csv_path) for r in row_dicts]
    if "mask" not in df.columns and spec.mask_pattern:
        row_dicts = row_dicts or df.to_dict("records")
        df["mask"] = [_fmt(spec.mask_pattern, r, csv_path) for r in row_dicts]
    if "label" not in df.columns:
        if require_label:
            raise ManifestError(f"{csv_path}: missing column 'label' (map one with data.columns: {{label: COL}})")
        df["label"] = pd.NA
    if df["image"].isna().any():
        i = int(df["image"].isna().to_numpy().argmax())
        raise ManifestError(f"{csv_path}: column 'image' is empty in row {i + 2}")
    df["image"] = [_resolve(root, p) for p in df["image"]]
    df["mask"] = [_resolve(root, p) for p in df["mask"]] if "mask" in df.columns else None
    if "image_id" not in df.columns:
        df["image_id"] = [Path(p).stem for p in df["image"]]
    df["image_id"] = df["image_id"].astype(str)
    if df["image_id"].duplicated().any():
        dup = df["image_id"][df["image_id"].duplicated()].iloc[0]
        raise ManifestError(f"{csv_path}: column 'image_id' is not unique (e.g. {dup!r})")
    if "split" not in df.columns:
        df["split"] = pd.NA
    if classes is not None and spec.label_index and "label" in df.columns:
        df["label"] = _labels_from_indices(df["label"], classes, csv_path)
    if classes is not None and require_label:
        bad = ~df["label"].isin(classes)
        if bad.any():
            i = int(bad.to_numpy().argmax())
            hint = ""
            if _class_indices(df["label"], len(classes))[1].all():
                hint = (f"; the labels look like class indices 0..{len(classes) - 1}: set data.label_index: true "
                        "(read in the run's class order) or write the class names")
            raise ManifestError(f"{csv_path}: column 'label' row {i + 2} holds {df['label'].iloc[i]!r}, "
                                f"not among the run's classes {classes}{hint}")
    df = select_split(df, split, csv_path)
    cols = list(CANONICAL) + [c for c in df.columns if c not in CANONICAL]
    return df[cols].reset_index(drop=True)


def _class_indices(labels: pd.Series, k: int) -> tuple[pd.Series, pd.Series]:
    """(labels as numbers, bool: the label is an integer class index 0..k−1)."""
    idx = pd.to_numeric(labels, errors="coerce")
    return idx, idx.notna() & (idx % 1 == 0) & idx.between(0, k - 1)


def _labels_from_indices(labels: pd.Series, classes: list[str], csv_path) -> pd.Series:
    """Class indices 0..k−1 (as read: strings) → the run's class names; ManifestError naming the first row that
    is not such an index."""
    idx, ok = _class_indices(labels, len(classes))
    if not ok.all():
        i = int((~ok).to_numpy().argmax())
        raise ManifestError(f"{csv_path}: column 'label' row {i + 2} holds {labels.iloc[i]!r}; data.label_index "
                            f"expects class indices 0..{len(classes) - 1}")
    return pd.Series([classes[int(v)] for v in idx], index=labels.index, dtype=object)


def select_split(df: pd.DataFrame, split: str | None, csv_path) -> pd.DataFrame:
    """The rows of one split ("all" or None: every row); ManifestError naming the splits present otherwise."""
    if split in (None, "all"):
        return df.reset_index(drop=True)
    present = sorted(df["split"].dropna().unique().tolist())
    if split not in present:
        raise ManifestError(f"{csv_path}: split {split!r} not found in column 'split' (present: {present})",
                            param="split")
    return df[df["split"] == split].reset_index(drop=True)


def default_split(df: pd.DataFrame, csv_path=None) -> str:
    """'test' when the manifest has a test split; 'all' when it has no splits at all. A manifest with splits
    but none named 'test' is a ManifestError asking for --split: auditing every row by default would mix
    training images, whose figures are optimistic, into a sign-off."""
    present = sorted(str(x) for x in df["split"].dropna().unique())
    if "test" in present:
        return "test"
    if not present:
        return "all"
    raise ManifestError(f"{csv_path}: column 'split' holds {present} but no 'test': pass split NAME to audit one "
                        "of them, or all for every row (training images included)", param="split")


def split_note(df: pd.DataFrame, split: str | None) -> str | None:
    """A warning when no split selected the audited rows (split "all" or None), else None: the audit may then
    score training images, whose figures are optimistic. df: the full manifest (canonical `split` column)."""
    if split not in (None, "all"):
        return None
    present = sorted(str(x) for x in df["split"].dropna().unique())
    if present and not df["split"].isna().any() and set(present) <= {"test", "val", "valid", "validation"}:
        return None                                  # held-out splits only
    if not present:
        return ("the manifest has no split column, so no split chose the audited rows: this may be auditing "
                "training data (any image the model was trained on reads optimistic); add a split column "
                "(train/val/test) or audit a test-only manifest")
    return (f"--split all: the rows of every split {present} are audited, training data included (optimistic "
            "figures); pass --split test, or another held-out split, for a sign-off")


def _fmt(pattern: str, row: dict, csv_path: Path) -> str:
    try:
        return pattern.format(**row)
    except KeyError as e:
        raise ManifestError(f"{csv_path}: pattern {pattern!r} names column {e.args[0]!r}, which is missing") from None
