"""Region providers: a registry of named target/artifact regions and the per-preset `RegionSet`.

A provider is a function ``provider(image, ctx) -> RegionResult`` registered under a region name::

    @register_region("ink", kind="artifact", params={"min_frac": 0.0005})
    def ink(image: np.ndarray, ctx: RegionContext) -> RegionResult: ...

``image`` is uint8 S×S×3 RGB on the model grid; ``ctx.params`` holds the provider's defaults updated with
the preset's options for that region. Names are unique: registering a name twice raises ``ValueError``.

Preset schema (the ``regions:`` section of a preset YAML; every key is a registered region name)::

    regions:
      lungs:   {source: file, values: [255], fallback: heuristic}   # mask file, value 255 = lung
      device:  {source: file, values: [127]}                        # same file, value 127 = device/markup
      lesion:  {source: file, threshold: 127, fallback: heuristic}  # binary mask: pixel > 127
      border:  {width: 0.08}                                        # geometric band, fraction of short side
      corners: {size: 0.12}
      text:    {}                                                   # detector with default parameters

Options common to every region:
  source     "file" (read a mask file), "heuristic" (the registered detector / geometry). Default: the
             provider's own default ("file" for device, "heuristic" for everything else).
  fallback   "heuristic": with source: file, use the detector when the row has no mask or the file is bad.
  presence_from  a column whose YES / NO gives the region's known presence (present True / False instead of
             the detector's decision), e.g. `text: {presence_from: dicom_BurnedInAnnotation}` (the DICOM header's
             BurnedInAnnotation, `audit.dicom`); other values (absent, empty) leave the detector's decision.
File options (source: file):
  column     manifest column holding the mask path (default "mask", the canonical column).
  pattern    format string over the row's columns, e.g. "masks/{image_id}.png", used instead of column;
             a relative result is resolved against ``root`` (default: the image's folder).
  root       folder for relative ``pattern`` paths.
  values     list of pixel values that belong to the region (multi-valued masks, e.g. [255] or [127]).
  threshold  binary masks without ``values``: pixel > threshold is the region (default 127; 0 = nonzero).
Any other key is a parameter of the provider (see ``list_regions(details=True)``); unknown keys are refused.

Missing regions are ``RegionResult(mask=None, ...)`` (NaN downstream), never a silent empty mask.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from audit.errors import ConfigError, MaskWarning
from audit.preprocess import InputSpec

from .types import RegionContext, RegionResult, row_id

KINDS = ("target", "artifact")
SOURCES = ("file", "heuristic")
FILE_KEYS = ("column", "pattern", "root", "values", "threshold", "absent_when_empty")
COMMON_KEYS = ("source", "fallback", "presence_from")


@dataclass(frozen=True)
class _Entry:
    name: str
    kind: str
    fn: Callable[[np.ndarray, RegionContext], RegionResult]
    params: dict
    default_source: str
    detector: bool
    doc: str


_REGISTRY: dict[str, _Entry] = {}


def register_region(name: str, kind: str, params: dict | None = None, default_source: str = "heuristic",
                    detector: bool = True) -> Callable:
    """Decorator registering ``fn(image, ctx) -> RegionResult`` as region ``name``.

    kind: "target" or "artifact". params: the provider's parameters with their defaults (preset options are
    checked against these). default_source: "heuristic" or "file". detector: whether it yields an image-level
    score. Raises ValueError on a duplicate name or an unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"register_region({name!r}): kind must be one of {KINDS}, got {kind!r}")
    if default_source not in SOURCES:
        raise ValueError(f"register_region({name!r}): default_source must be one of {SOURCES}")

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"region {name!r} is already registered (by {_REGISTRY[name].fn.__module__}."
                             f"{_REGISTRY[name].fn.__qualname__}); pick another name")
        _REGISTRY[name] = _Entry(name, kind, fn, dict(params or {}), default_source, detector,
                                 (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "")
        return fn

    return deco


def list_regions(kind: str | None = None, details: bool = False) -> list[str] | list[dict]:
    """Registered region names (sorted), optionally of one kind; details=True gives dicts with kind/params/doc."""
    es = [e for n, e in sorted(_REGISTRY.items()) if kind is None or e.kind == kind]
    if details:
        return [{"name": e.name, "kind": e.kind, "params": dict(e.params), "default_source": e.default_source,
                 "detector": e.detector, "doc": e.doc} for e in es]
    return [e.name for e in es]


def region_kind(name: str) -> str:
    """'target' or 'artifact'. Raises KeyError naming the registered regions for an unknown name."""
    return _entry(name).kind


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise KeyError(f"unknown region {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


@dataclass(frozen=True)
class RegionConfig:
    """One region of a preset, validated: name, kind, source, fallback, file options, provider params."""

    name: str
    kind: str
    source: str
    fallback: str | None
    file: dict
    params: dict
    presence_from: str | None = None


def _region_config(name: str, opts: Any) -> RegionConfig:
    try:
        e = _entry(name)
    except KeyError as err:
        raise ConfigError(f"regions: {err.args[0]}") from None
    if opts is None:
        opts = {}
    if not isinstance(opts, Mapping):
        raise ConfigError(f"regions.{name}: expected a mapping of options, got {type(opts).__name__} {opts!r}")
    opts = dict(opts)
    source = opts.pop("source", e.default_source)
    if source not in SOURCES:
        raise ConfigError(f"regions.{name}.source: expected one of {SOURCES}, got {source!r}")
    fallback = opts.pop("fallback", None)
    if fallback not in (None, "heuristic"):
        raise ConfigError(f"regions.{name}.fallback: expected 'heuristic' or nothing, got {fallback!r}")
    presence_from = opts.pop("presence_from", None)
    if presence_from is not None and not isinstance(presence_from, str):
        raise ConfigError(f"regions.{name}.presence_from: expected a column name, got {presence_from!r}")
    file = {k: opts.pop(k) for k in FILE_KEYS if k in opts}
    if file and source != "file":
        raise ConfigError(f"regions.{name}: option(s) {sorted(file)} need source: file")
    if "values" in file:
        v = file["values"]
        v = [v] if isinstance(v, (int, float)) else v
        if not (isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v)):
            raise ConfigError(f"regions.{name}.values: expected a list of pixel values, got {file['values']!r}")
        file["values"] = [int(x) for x in v]
    if "absent_when_empty" in file and not isinstance(file["absent_when_empty"], bool):
        raise ConfigError(f"regions.{name}.absent_when_empty: expected true or false, got {file['absent_when_empty']!r}")
    if "threshold" in file and not isinstance(file["threshold"], (int, float)):
        raise ConfigError(f"regions.{name}.threshold: expected a number, got {file['threshold']!r}")
    unknown = sorted(set(opts) - set(e.params))
    if unknown:
        raise ConfigError(f"regions.{name}: unknown option(s) {unknown}; expected {sorted(COMMON_KEYS + FILE_KEYS)}"
                          f" or the provider's parameters {sorted(e.params)}")
    for k, v in opts.items():  # a number where the provider's default is one (else every image fails alike)
        d = e.params.get(k)
        if isinstance(d, (int, float)) and not isinstance(d, bool):
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"regions.{name}.{k}: expected a number ≥ 0 (default {d}), got {v!r}")
    params = {**e.params, **opts}
    return RegionConfig(name, e.kind, source, fallback, file, params, presence_from)


class RegionSet:
    """The regions of one preset. Picklable (plain data; providers are looked up by name)."""

    def __init__(self, configs: list[RegionConfig]):
        self.configs = list(configs)

    @property
    def kinds(self) -> dict[str, str]:
        """Region name → 'target' | 'artifact', in preset order."""
        return {c.name: c.kind for c in self.configs}

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.configs]

    def __len__(self) -> int:
        return len(self.configs)

    def __repr__(self) -> str:
        return f"RegionSet({', '.join(f'{c.name}:{c.kind}:{c.source}' for c in self.configs)})"

    def compute(self, grid_img: np.ndarray, row: Mapping, spec: InputSpec,
                src_hw: tuple[int, int]) -> dict[str, RegionResult]:
        """Every region of one image: name → RegionResult (mask bool S×S or None).

        grid_img: uint8 S×S×3 RGB on the model grid (``image_to_grid``). row: the manifest row. src_hw: the
        original image's (H, W). Never raises for per-image problems: they become a ``MaskWarning`` and a
        missing region (mask=None, note=reason).
        """
        img = np.asarray(grid_img)
        if img.ndim != 3 or img.shape[0] != img.shape[1] or img.shape[2] != 3:
            raise ValueError(f"grid_img: expected uint8 S×S×3, got shape {img.shape}")
        if img.dtype != np.uint8:
            raise TypeError(f"grid_img: expected dtype uint8, got {img.dtype}")
        cache: dict = {}
        out: dict[str, RegionResult] = {}
        for c in self.configs:
            out[c.name] = r = self._one(c, img, row, spec, tuple(src_hw), cache)
            known = str(row.get(c.presence_from) or "").strip().upper() if c.presence_from else ""
            if known in ("YES", "NO"):  # e.g. the DICOM header's BurnedInAnnotation
                r.present = known == "YES"
                r.note = f"{r.note + '; ' if r.note else ''}presence from {c.presence_from} = {known}"
        return out

    def _one(self, c: RegionConfig, img, row, spec, src_hw, cache) -> RegionResult:
        from .files import file_region

        ident = row_id(row)
        if c.source == "file":
            res = file_region(c, row, spec, src_hw, cache)
            if res.mask is not None or c.fallback != "heuristic":
                return res
            why = res.note
        else:
            why = ""
        ctx = RegionContext(c.name, c.kind, dict(c.params), row, spec, src_hw, cache)
        try:
            res = _entry(c.name).fn(img, ctx)
        except Exception as e:  # a provider bug must not kill a dataset pass: the region goes missing, loudly
            msg = f"{ident}: region {c.name!r}: provider failed ({type(e).__name__}: {e})"
            warnings.warn(msg, MaskWarning, stacklevel=2)
            return RegionResult(None, math.nan, None, msg)
        res = _check_result(res, img.shape[0], c.name, ident)
        if why:
            res.note = f"{res.note} (file: {why})"
        return res


def _check_result(res: RegionResult, s: int, name: str, ident: str) -> RegionResult:
    if not isinstance(res, RegionResult):
        raise TypeError(f"{ident}: region {name!r}: provider returned {type(res).__name__}, expected RegionResult")
    if res.mask is not None:
        m = np.asarray(res.mask)
        if m.shape != (s, s):
            raise ValueError(f"{ident}: region {name!r}: provider returned a mask of shape {m.shape}, "
                             f"expected {(s, s)}")
        res.mask = m.astype(bool, copy=False)
    return res


def build_regions(cfg: Mapping | None) -> RegionSet:
    """A ``RegionSet`` from a preset's ``regions:`` mapping (name → options; see the module docstring).

    Raises ConfigError (one line, naming the region and option) on unknown names/options or bad values.
    """
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"regions: expected a mapping of region name → options, got {type(cfg).__name__}")
    return RegionSet([_region_config(str(n), o) for n, o in cfg.items()])
