"""`prepare_scan`: a preset file and a manifest file → (preset, manifest, input spec) for `run_scan` (the app
layer: it reads the preset, which is checked against every section)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import ManifestError
from ..preprocess import InputSpec
from .core import scan_input_spec


def prepare_scan(data: str | Path, config: str | Path, label_col: str | None = None
                 ) -> tuple[dict, pd.DataFrame, InputSpec]:
    """(preset, manifest, spec) for `cli.py scan`: load the preset, then the manifest with the preset's `data:`
    mapping; `label_col` maps the label onto that column (e.g. "isic2017_class"), overriding the preset.
    Raises ConfigError / ManifestError with one line."""
    from audit.config import load_preset

    from ..manifest import DataSpec, load_manifest
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
