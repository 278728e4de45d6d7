"""Region masks (target and artifact) on the model-input grid.

Public API::

    register_region(name, kind, params=None, default_source="heuristic", detector=True)  # decorator
    list_regions(kind=None, details=False) -> list[str]
    region_kind(name) -> "target" | "artifact"
    build_regions(cfg: dict) -> RegionSet          # cfg = a preset's ``regions:`` mapping
    RegionSet.kinds -> dict[str, str]
    RegionSet.compute(grid_img, row, spec, src_hw) -> dict[str, RegionResult]
    RegionResult(mask: bool S×S | None, score: float, present: bool | None, note: str)
    export_masks(preset, manifest, out_dir, spec, limit=None, progress=None) -> pandas.DataFrame

The preset schema is documented in ``masks.registry``.
"""
from .registry import (RegionContext, RegionResult, RegionSet, build_regions, list_regions, region_kind,
                       register_region)
from . import geometric as _geometric, detect_cxr as _detect_cxr, detect_derm as _detect_derm  # noqa: F401


def export_masks(*args, **kwargs):
    """See ``masks.export.export_masks`` (imported lazily to keep worker start-up light)."""
    from .export import export_masks as _export
    return _export(*args, **kwargs)


__all__ = ["RegionContext", "RegionResult", "RegionSet", "build_regions", "export_masks", "list_regions",
           "region_kind", "register_region"]
