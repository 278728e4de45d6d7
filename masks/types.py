"""What a region provider takes and returns (`RegionContext`, `RegionResult`), below the registry and the
providers (detectors, mask files) that use them."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from audit.preprocess import InputSpec


@dataclass
class RegionResult:
    """One region of one image.

    mask: bool S×S on the model grid, or None when the region is missing (NaN downstream; see ``note``).
    score: image-level detector score (higher = more likely present); NaN when the provider is not a detector.
    present: whether the artifact is on the image (True/False): a detector's decision, or for an artifact file
      region what its file says (a region pixel: True; the file lacks the region's values or is all zero: False;
      no file for the image: False with ``absent_when_empty``, else None); None when unknown, for targets and
      for geometry.
    note: where the mask came from ("file", "heuristic", "geometry") or why it is missing.
    """

    mask: np.ndarray | None
    score: float = math.nan
    present: bool | None = None
    note: str = ""


@dataclass
class RegionContext:
    """What a provider may use besides the image: its parameters, the manifest row and the geometry."""

    name: str
    kind: str
    params: dict
    row: Mapping = field(default_factory=dict)
    spec: InputSpec | None = None
    src_hw: tuple[int, int] | None = None
    cache: dict = field(default_factory=dict)  # shared by the regions of one image (e.g. decoded mask files)


def row_id(row: Mapping) -> str:
    try:
        v = row.get("image_id") if hasattr(row, "get") else None
        return str(v) if v is not None else str(row.get("image", "?"))
    except Exception:
        return "?"
