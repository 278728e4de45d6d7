"""What the single-label pipeline (audit/pipeline.py) and the multi-label audit (audit/multilabel.py) share: the
result of a pass, the run's default folder name, the validation split names, the regions function, JSON writing."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from .errors import ManifestError
from .manifest import DataSpec

if TYPE_CHECKING:
    from .config import AuditConfig
    from .run import RunConfig
    from .summary_types import AuditSummary


@dataclass
class PipelineResult:
    """What the pipeline hands back (the public result is `audit.api.AuditResult`). summary: the typed
    `AuditSummary` of a single-label audit, summary.json's dict for a multi-label audit; errors: (manifest row,
    image_id, image, reason) of the unreadable images."""

    out_dir: Path
    per_image: pd.DataFrame
    summary: AuditSummary | dict
    errors: list[tuple[str, str]] = field(default_factory=list)


def run_name(run: RunConfig) -> str:
    """The run's name for the default out folder: the run dir's, else the checkpoint's stem, else the model's."""
    if run.run_dir:
        return run.run_dir.name
    return Path(run.checkpoint).stem if run.checkpoint else run.model_name


#: Split names read as the validation split that operating-point thresholds are tuned on (the first present).
VALIDATION_SPLITS = ("val", "valid", "validation")


def manifest_source(cfg: AuditConfig, run: RunConfig) -> tuple[Path, DataSpec]:
    """The manifest an audit reads (cfg.data, else the run's data.manifest) and its column mapping (the run's
    data section overridden by the preset's); ManifestError naming `data` when there is none."""
    path = Path(cfg.data) if cfg.data else run.manifest
    if path is None:
        raise ManifestError("no manifest: pass data (a manifest CSV) or set data.manifest in the run's "
                            "config.yaml", param="data")
    spec_d = {k: v for k, v in (run.data or {}).items() if k != "manifest"}
    spec_d.update(cfg.data_spec or {})
    return Path(path), DataSpec.from_dict(spec_d)


def build_region_fn(cfg: AuditConfig):
    """(region_fn or None, {region: kind}) from the preset's `regions:` section."""
    if not cfg.regions:
        return None, {}
    from masks import build_regions
    rs = build_regions(cfg.regions)
    return rs.compute, dict(rs.kinds)

