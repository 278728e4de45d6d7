"""The public Python API (for notebooks and scripts): `run_audit`, `load_result`, `scan`, `discover`,
`render_reports`, `compare`, and the typed results `AuditResult`, `Summary`, `Maps`.

The pipeline is file-based: every call writes the same folder `cli.py audit` writes (per_image.csv, cams.npz,
summary.json, config.resolved.yaml, errors.csv; docs/audit.md), and the result objects read it. docs/api.md is the
reference, with an example::

    import audit
    result = audit.run_audit("runs/resnet18", "manifest.csv", preset="configs/ham10000.yaml")
    result.summary.verdict ; result.per_image ; result.show("ISIC_0024306")

Errors: bad input raises `audit.errors.AuditError` subclasses with one line naming the parameter, file or column
(`ConfigError` is also a ValueError; its `.param` names the parameter); an unknown keyword raises TypeError.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .config import AUDIT_KEYS, AuditConfig, resolve_config
from .errors import ConfigError, ManifestError, RunDirError
from .preprocess import InputSpec
from .stats import Estimate
from .summary_types import AuditSummary as Summary, Gate, OperatingPoint, OperatingPoints, RegionSummary, SummaryFormatError
from .stream import Progress

__all__ = ["run_audit", "load_result", "scan", "discover", "render_reports", "compare", "AuditResult", "Summary",
           "Gate", "RegionSummary", "OperatingPoint", "OperatingPoints", "Maps", "AuditConfig", "InputSpec",
           "Estimate"]

PathLike = str | os.PathLike

#: The keyword options `run_audit` takes: the AuditConfig fields, less those given as its own arguments.
OPTIONS = tuple(sorted(AUDIT_KEYS - {"run_dir", "data", "out", "preset"}))
#: Options that describe a run directory's model; an in-memory module takes `classes` and `input` instead.
RUN_DIR_ONLY = ("arch", "source", "checkpoint")
#: The manifest written into the out folder when the manifest is a DataFrame (the audit reads it from there).
DATAFRAME_MANIFEST = "manifest.dataframe.csv"


# ================================================================================================ typed results

def _f(v: Any) -> float:
    """A number (None or not a number → NaN) as a float."""
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def as_summary(s: dict) -> Summary | dict:
    """summary.json's dict → the typed `Summary` (`audit.summary_types.AuditSummary`); a multi-label audit's
    summary (`task: multilabel`, per-finding figures; docs/multilabel.md) stays its dict. A summary.json that does
    not have the documented shape raises RunDirError naming the key."""
    if s.get("task") == "multilabel":
        return s
    try:
        return Summary.from_json(s, "summary.json")
    except SummaryFormatError as e:
        raise RunDirError(str(e)) from None


class Maps(Mapping):
    """The raw Grad-CAM maps of an audit at layer resolution, read from cams.npz on first use.

    `maps[image_id]` → float32 h×w array (ReLU'd, never normalised: Σ over the map is per_image's cam_sum).
    `maps.array` → float32 N×h×w, rows in per_image order; `maps.image_ids` → the N ids; `maps.shape` →
    (N, h, w); `maps.layer` → the module path the maps come from; `maps.target` → int64 N, the class index each
    map explains. Iterating yields image ids.

    A multi-label audit maps (image, finding) pairs (only the pairs it needed, docs/multilabel.md): the keys are
    (image_id, finding) tuples, `maps[image_id, finding]` → h×w; `maps.array` → P×h×w; `maps.image_ids` and
    `maps.findings` → each map's image and finding (P each); `maps.target` → None. `maps[image_id]` alone raises
    KeyError naming the findings mapped for that image."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self._arrays: dict[str, np.ndarray] | None = None
        self._index: dict | None = None
        self._ids: list[str] = []
        self._findings: list[str] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            if not self.path.is_file():
                raise RunDirError(f"{self.path}: not found (the audit writes cams.npz)")
            with np.load(self.path, allow_pickle=False) as z:
                self._arrays = {k: z[k] for k in z.files}
            ids = self._arrays["image_id"].astype(str)
            self._index = {}
            if "pair_image" in self._arrays:  # multi-label: one map per (image, finding) pair
                self._ids = ids[self._arrays["pair_image"]].tolist()
                self._findings = self._arrays["finding"].astype(str)[self._arrays["pair_finding"]].tolist()
                for i, key in enumerate(zip(self._ids, self._findings)):
                    self._index.setdefault(key, i)
            else:
                self._ids = ids.tolist()
                for i, iid in enumerate(self._ids):
                    self._index.setdefault(iid, i)
        return self._arrays

    @property
    def multilabel(self) -> bool:
        self._load()
        return self._findings is not None

    @property
    def array(self) -> np.ndarray:
        return self._load()["cam"]

    @property
    def image_ids(self) -> list[str]:
        self._load()
        return list(self._ids)

    @property
    def findings(self) -> list[str] | None:
        """Multi-label: the finding each map explains (P names); None for a single-label audit."""
        self._load()
        return None if self._findings is None else list(self._findings)

    @property
    def layer(self) -> str:
        return str(self._load().get("layer", ""))

    @property
    def target(self) -> np.ndarray | None:
        return self._load().get("target")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def __getitem__(self, key) -> np.ndarray:
        self._load()
        assert self._index is not None
        if self._findings is not None:
            if isinstance(key, tuple) and len(key) == 2:
                k = (str(key[0]), str(key[1]))
                if k in self._index:
                    return self.array[self._index[k]]
                mapped = [f for i, f in zip(self._ids, self._findings) if i == k[0]]
                raise KeyError(f"{k!r}: no map in {self.path} (findings mapped for image {k[0]!r}: {mapped}; by "
                               "default only pairs positive in truth or flagged are mapped, maps='all' maps every "
                               "pair)")
            mapped = [f for i, f in zip(self._ids, self._findings) if i == str(key)]
            raise KeyError(f"image_id {key!r}: a multi-label audit's maps are per (image, finding): use "
                           f"maps[{str(key)!r}, finding] (findings mapped for it: {mapped})")
        if str(key) not in self._index:
            raise KeyError(f"image_id {key!r}: no map in {self.path} ({len(self._index)} images)")
        return self.array[self._index[str(key)]]

    def __iter__(self) -> Iterator:
        self._load()
        assert self._index is not None
        return iter(self._index)

    def __len__(self) -> int:
        self._load()
        assert self._index is not None
        return len(self._index)

    def __repr__(self) -> str:
        if self._arrays is None:
            return f"Maps({str(self.path)!r}, not loaded)"
        return f"Maps({str(self.path)!r}, shape={self.shape}, layer={self.layer!r})"


def _figure(grid: np.ndarray, masks: dict, kinds: dict[str, str], cam: np.ndarray, layer: str, shown: list[str],
            fracs: Mapping[str, Any], title: str, blocky: bool):
    """The Figure of `AuditResult.show`: left the grid image with the region outlines, right the overlay."""
    from matplotlib.figure import Figure

    from .report.overlay import ARTIFACT_RGB, TARGET_RGB, outline, overlay_image
    over = np.asarray(overlay_image(grid, cam, masks, kinds, caption="", blocky=blocky))
    k = over.shape[0] // grid.shape[0]
    left = np.repeat(np.repeat(grid, k, 0), k, 1).copy()
    for name, m in masks.items():
        colour = {"target": TARGET_RGB, "artifact": ARTIFACT_RGB}.get(kinds.get(name, ""))
        if m is not None and colour is not None:
            left[outline(np.repeat(np.repeat(np.asarray(m, bool), k, 0), k, 1), 1 if left.shape[0] < 300 else 2)] \
                = colour
    fig = Figure(figsize=(8.4, 4.6), layout="constrained")
    ax = fig.subplots(1, 2)
    ax[0].imshow(left)
    ax[1].imshow(over)
    for a in ax:
        a.set_axis_off()
    outlined = [r for r in shown if masks.get(r) is not None]
    missing = [r for r in shown if masks.get(r) is None]
    ax[0].set_title("image" + (f", outlined: {', '.join(outlined)}" if outlined else "")
                    + (f" (no mask: {', '.join(missing)})" if missing else ""), fontsize=9)
    shares = [f"{r} {100 * _f(fracs.get(f'frac_{r}')):.0f}%" for r in shown
              if math.isfinite(_f(fracs.get(f"frac_{r}")))]
    ax[1].set_title(f"Grad-CAM ({layer})" + (f": CAM share {', '.join(shares)}" if shares else ""), fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


@dataclass
class AuditResult:
    """What `run_audit` and `load_result` return: the audit folder and what it holds.

    out_dir: the folder written (per_image.csv, cams.npz, summary.json, config.resolved.yaml, errors.csv).
    per_image: one row per audited image (docs/audit.md lists the columns: image_id, label, pred, confidence,
        p_<class>, frac_<region>, lift_<region>, flags, ...; a multi-label audit's: y_/p_/logodds_/pred_<finding>).
    summary: the typed `Summary` (`audit.summary_types.AuditSummary`; `summary.to_json()` is summary.json; a
        multi-label audit's summary is its dict, docs/multilabel.md). errors: the unreadable images (image_id, image,
        reason; empty when none). maps: the layer-resolution maps (`Maps`, loaded from cams.npz on first use).
    per_finding: a multi-label audit's per_finding.csv (one row per image and finding), None otherwise.
    `show(image_id, region=None, finding=None)` draws one image, its overlay and the region outlines."""

    out_dir: Path
    per_image: pd.DataFrame
    summary: Summary | dict
    errors: pd.DataFrame
    _maps: Maps | None = field(default=None, repr=False)

    @property
    def multilabel(self) -> bool:
        """True for a multi-label audit (one sigmoid output per finding; docs/multilabel.md)."""
        return isinstance(self.summary, dict) and self.summary.get("task") == "multilabel"

    @property
    def maps(self) -> Maps:
        if self._maps is None:
            self._maps = Maps(self.out_dir / "cams.npz")
        return self._maps

    @property
    def per_finding(self) -> pd.DataFrame | None:
        p = self.out_dir / "per_finding.csv"
        return pd.read_csv(p, dtype={"image_id": str}) if self.multilabel and p.is_file() else None

    @property
    def verdict(self) -> str:
        return str(self.summary.get("verdict")) if isinstance(self.summary, dict) else self.summary.verdict

    def show(self, image_id: str, region: str | None = None, blocky: bool = False, finding: str | None = None):
        """A matplotlib Figure of one audited image: left the image on the model grid with the region outlines
        (target green, artifact magenta), right the Grad-CAM overlay (jet, min-maxed for display only, bilinear
        or, with blocky, the raw layer grid); the title gives label, prediction, confidence and the region's CAM
        share. region: outline only this region (default all). finding: a multi-label audit's finding whose map
        is shown (required there; for a single-label audit leave it None). The Figure is not attached to pyplot:
        a notebook displays it; `fig.savefig(path)` writes it.

        Raises KeyError for an image_id that was not audited, ValueError for an unknown region, for a multi-label
        audit without `finding` (naming the findings mapped for the image) or for a pair without a map,
        RunDirError when the image file cannot be read."""
        if self.multilabel:
            return self._show_multilabel(str(image_id), region, blocky, finding)
        if finding is not None:
            raise ValueError("finding: for a multi-label audit; a single-label audit has one map per image")
        from .report.inputs import read_out_dir
        inp = read_out_dir(self.out_dir)
        iid = str(image_id)
        rows = inp.per_image[inp.per_image["image_id"].astype(str) == iid]
        if rows.empty:
            raise KeyError(f"image_id {iid!r}: not among the {len(inp.per_image)} audited images")
        if region is not None and region not in inp.kinds:
            raise ValueError(f"region {region!r}: not a region of this audit (regions: {list(inp.kinds)})")
        row = rows.iloc[0].to_dict()
        grid, masks, note = inp.load(row)
        if grid is None:
            raise RunDirError(f"image_id {iid!r}: {note}")
        if region is not None:
            masks = {region: masks.get(region)}
        shown = [region] if region is not None else list(inp.kinds)
        return _figure(grid, masks, inp.kinds, inp.cams[inp.cam_index[iid]], inp.layer, shown, row,
                       f"{iid}: label {row.get('label')} · pred {row.get('pred')} ({_f(row.get('confidence')):.2f})",
                       blocky)

    def _show_multilabel(self, iid: str, region: str | None, blocky: bool, finding: str | None):
        from .report.multilabel import read_multilabel_dir
        ml = read_multilabel_dir(self.out_dir)
        img_rows = ml.images[ml.images["image_id"].astype(str) == iid]
        if img_rows.empty:
            raise KeyError(f"image_id {iid!r}: not among the {len(ml.images)} audited images")
        kinds = ml.inp.kinds
        if region is not None and region not in kinds:
            raise ValueError(f"region {region!r}: not a region of this audit (regions: {list(kinds)})")
        d = ml.long[ml.long["image_id"].astype(str) == iid]
        mapped = d.loc[d["map"] >= 0, "finding"].astype(str).tolist()
        if finding is None:
            raise ValueError(f"finding: a multi-label audit has one map per (image, finding); pass "
                             f"show({iid!r}, finding=...) (findings mapped for it: {mapped})")
        if str(finding) not in set(d["finding"].astype(str)):
            raise ValueError(f"finding {finding!r}: not an audited finding ({list(ml.summary.get('findings', {}))})")
        row = d[d["finding"].astype(str) == str(finding)].iloc[0].to_dict()
        if int(row["map"]) < 0:
            raise ValueError(f"finding {finding!r}: no map for image {iid!r} (findings mapped for it: {mapped}; "
                             "maps='all' maps every pair)")
        grid, masks, note = ml.inp.load(img_rows.iloc[0].to_dict())
        if grid is None:
            raise RunDirError(f"image_id {iid!r}: {note}")
        if region is not None:
            masks = {region: masks.get(region)}
        shown = [region] if region is not None else list(kinds)
        lab = _f(row.get("label"))
        truth = "unlabelled" if math.isnan(lab) else ("positive" if lab == 1 else "negative")
        flagged = str(row.get("pred")).lower() in ("true", "1", "1.0")
        return _figure(grid, masks, kinds, ml.cams[int(row["map"])], ml.inp.layer, shown, row,
                       f"{iid}: {finding} p = {_f(row.get('p')):.2f} ({'flagged' if flagged else 'not flagged'}), "
                       f"truth {truth}", blocky)


def _errors_frame(out_dir: Path) -> pd.DataFrame:
    p = out_dir / "errors.csv"
    if p.is_file():
        return pd.read_csv(p, dtype=str)
    return pd.DataFrame({"image_id": pd.Series(dtype=str), "image": pd.Series(dtype=str),
                         "reason": pd.Series(dtype=str)})


def load_result(out_dir: PathLike) -> AuditResult:
    """The `AuditResult` of a finished audit folder (written by `run_audit` or `cli.py audit`).

    Raises RunDirError naming the file when per_image.csv or summary.json is missing or unreadable."""
    out = Path(out_dir)
    for name in ("per_image.csv", "summary.json"):
        if not (out / name).is_file():
            raise RunDirError(f"{out / name}: not found (not an audit folder)")
    try:
        summary = json.loads((out / "summary.json").read_text())
        per_image = pd.read_csv(out / "per_image.csv", dtype={"image_id": str, "label": str, "pred": str})
    except (OSError, ValueError) as e:
        raise RunDirError(f"{out}: unreadable audit files ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None
    return AuditResult(out_dir=out, per_image=per_image, summary=as_summary(summary),
                       errors=_errors_frame(out))


# ================================================================================================ run_audit

def _check_options(options: Mapping[str, Any], fn: str, allowed: Sequence[str]) -> None:
    for k in options:
        if k not in allowed:
            hint = {"run_dir": "pass the run directory as the first argument",
                    "data": "pass the manifest as the second argument",
                    "config": "the preset is preset=", "preset": "the preset is preset="}.get(k)
            raise TypeError(f"{fn}() got an unexpected keyword argument {k!r}"
                            + (f" ({hint})" if hint else f"; options are {', '.join(allowed)}"))


def _module_device(module: torch.nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state_dict (names, dtypes, shapes, bytes), read without changing it: the cache key
    of an in-memory model (a run dir's is its checkpoint file's hash)."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        if not isinstance(v, torch.Tensor):
            continue
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(v.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def module_input_spec(module: torch.nn.Module, input: InputSpec | Mapping | None = None,
                      input_size: int | None = None, mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None) -> InputSpec:
    """The preprocessing of an in-memory model: `input` (an InputSpec, or a dict of its fields), with input_size /
    mean / std overriding; what is not given comes from the module's timm `pretrained_cfg` (input_size, mean, std,
    as `audit.run` reads a timm run). Never assumed: ConfigError naming input_size / mean / std when a value is
    neither given nor declared by the module."""
    if input is not None and not isinstance(input, (InputSpec, Mapping)):
        raise ConfigError(f"input: expected an audit.InputSpec or a dict of its fields, got {type(input).__name__}",
                          param="input")
    base: dict = {}
    if isinstance(input, InputSpec):
        base = {f.name: getattr(input, f.name) for f in fields(InputSpec)}
    elif isinstance(input, Mapping):
        unknown = [k for k in input if k not in {f.name for f in fields(InputSpec)}]
        if unknown:
            raise ConfigError(f"input: unknown key(s) {unknown}; expected some of "
                              f"{[f.name for f in fields(InputSpec)]}", param="input")
        base = dict(input)
    pre = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None) or {}
    if not isinstance(pre, Mapping):
        pre = {}
    if input_size is not None:
        base["size"] = input_size
    if mean is not None:
        base["mean"] = mean
    if std is not None:
        base["std"] = std
    if "size" not in base and pre.get("input_size"):
        base["size"] = int(pre["input_size"][-1])
    for k in ("mean", "std"):
        if k not in base and pre.get(k) is not None:
            base[k] = tuple(pre[k])
    for k, name in (("size", "input_size"), ("mean", "mean"), ("std", "std")):
        if k not in base:
            raise ConfigError(f"{name}: the model declares no {k} (no timm pretrained_cfg); pass input_size=, "
                              "mean= and std= (or input=InputSpec(...)), the values it was trained with",
                              param=name)
    size = base["size"]
    if not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
        raise ConfigError(f"input_size: expected a positive integer (the side of the square input), got {size!r}",
                          param="input_size")
    for k in ("mean", "std"):
        v = base[k]
        if not (isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v)):
            raise ConfigError(f"{k}: expected a sequence of numbers (one per channel), got {v!r}", param=k)
        base[k] = tuple(float(x) for x in v)
    return InputSpec(**base)


TASKS = ("multiclass", "multilabel")


def _is_xrv(module: torch.nn.Module) -> bool:
    return type(module).__module__.split(".")[0] == "torchxrayvision"


def _module_classes(module: torch.nn.Module, classes: Sequence[str] | None, multilabel: bool) -> list[str]:
    """The class (finding) names of a module: `classes`, or a torchxrayvision model's `pathologies` ('' marks an
    untrained slot: unused_<i>). ConfigError naming classes otherwise."""
    if classes is None and multilabel and _is_xrv(module) and getattr(module, "pathologies", None):
        classes = [str(c) if c else f"unused_{i}" for i, c in enumerate(module.pathologies)]
    if classes is None:
        what = "finding names" if multilabel else "class names"
        raise ConfigError(f"classes: an in-memory model needs its {what} in logit order (classes=[...])",
                          param="classes")
    if isinstance(classes, (str, bytes)):
        raise ConfigError(f"classes: expected a list of names in logit order, got the string {classes!r}",
                          param="classes")
    cls = [str(c) for c in classes]
    if len(set(cls)) != len(cls) or len(cls) < (1 if multilabel else 2):
        need = "at least one unique finding name" if multilabel else "at least two unique class names"
        raise ConfigError(f"classes: expected {need} in logit order, got {list(classes)!r}", param="classes")
    return cls


def _finding_thresholds(thresholds, cls: list[str], base: list[float] | None) -> list[float] | None:
    """Per-finding decision thresholds (probabilities in (0, 1)) in logit order: `thresholds` as a sequence (one
    per finding) or a mapping {finding: p} (the others keep `base`, default 0.5); None when neither is given."""
    if thresholds is None:
        return base
    if isinstance(thresholds, Mapping):
        unknown = [k for k in thresholds if k not in cls]
        if unknown:
            raise ConfigError(f"thresholds: finding(s) {unknown} not among the classes {cls}", param="thresholds")
        out = list(base or [0.5] * len(cls))
        for k, v in thresholds.items():
            out[cls.index(k)] = v
    elif isinstance(thresholds, (list, tuple, np.ndarray, torch.Tensor)):
        out = [v.item() if hasattr(v, "item") else v for v in thresholds]
        if len(out) != len(cls):
            raise ConfigError(f"thresholds: expected one probability per finding ({len(cls)}), got {len(out)}",
                              param="thresholds")
    else:
        raise ConfigError(f"thresholds: expected a sequence of probabilities or a dict {{finding: probability}}, "
                          f"got {type(thresholds).__name__}", param="thresholds")
    bad = [v for v in out if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1]
    if bad:
        raise ConfigError(f"thresholds: expected probabilities in (0, 1), got {bad[:4]}", param="thresholds")
    return [float(v) for v in out]


def module_run(module: torch.nn.Module, classes: Sequence[str] | None, spec: InputSpec, name: str | None = None,
               binary_logit: int | None = None, positive: str | None = None, task: str | None = None,
               thresholds: Sequence[float] | Mapping[str, float] | None = None):
    """(a copy of `module` to audit, in eval mode; the RunConfig describing it). The caller's module is only
    read: deep-copied (weights, buffers, hooks), so its mode, requires_grad flags, device and weights stay as
    they were whatever the audit does to the copy (move it, fold its BatchNorm, add hooks).

    task: "multiclass" (default: N×C softmax logits, or one sigmoid output audited as binary with `binary_logit`)
    or "multilabel" (one sigmoid logit per finding, `classes` = the findings in logit order; inferred for a
    torchxrayvision model, whose `pathologies` are then the default classes and whose `op_threshs` become the
    thresholds and are removed from the copy, so that it returns logits). thresholds (multi-label only): each
    finding's decision threshold on σ(logit), a sequence in logit order or {finding: p}; default 0.5.

    One forward pass of zeros on the copy checks the output width: one logit per class (finding); or one output
    per class-less sigmoid when `binary_logit` (or a one-output model with two classes) audits a sigmoid output
    as binary (`audit.run.BinaryLogit`). ConfigError naming classes / binary_logit / task / thresholds
    otherwise."""
    from .run import BinaryLogit, RunConfig
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"run_dir_or_model: expected a run directory path or a torch.nn.Module, got "
                        f"{type(module).__name__}")
    if task is None:
        task = "multilabel" if _is_xrv(module) else "multiclass"
    if task not in TASKS:
        raise ConfigError(f"task: expected one of {', '.join(TASKS)}, got {task!r}", param="task")
    multilabel = task == "multilabel"
    if multilabel and binary_logit is not None:
        raise ConfigError("binary_logit: audits one sigmoid output as a binary model; task='multilabel' audits "
                          "every finding (choose them with findings=[...])", param="binary_logit")
    if not multilabel and thresholds is not None:
        raise ConfigError("thresholds: per-finding thresholds are for task='multilabel' (a single-label audit's "
                          "operating points come from positive= and sensitivities=)", param="thresholds")
    cls = _module_classes(module, classes, multilabel)
    if positive is not None and positive not in cls:
        raise ConfigError(f"positive {positive!r}: not among the classes {cls}", param="positive")
    try:
        model = copy.deepcopy(module)
    except Exception as e:
        raise TypeError(f"run_dir_or_model: the module cannot be copied ({type(e).__name__}: {e}); the audit "
                        "never changes a caller's model, so it works on a copy: save it as a run directory "
                        "(docs/run_dir.md) instead") from None
    model.eval()
    base_thr = None
    if multilabel and isinstance(getattr(model, "op_threshs", None), torch.Tensor):  # torchxrayvision
        vals = [float(v) for v in model.op_threshs.detach().double().cpu().flatten()]
        if len(vals) == len(cls):
            base_thr = [0.5 if math.isnan(v) or not 0 < v < 1 else v for v in vals]
        model.op_threshs = None  # the copy returns logits, not xrv's op_norm'd probabilities
    if multilabel and getattr(model, "apply_sigmoid", False) is True:  # torchxrayvision: logits, not σ
        model.apply_sigmoid = False
    thr = _finding_thresholds(thresholds, cls, base_thr) if multilabel else None
    dev = _module_device(model)
    with torch.no_grad():
        out = model(torch.zeros(1, spec.channels, spec.size, spec.size, device=dev))
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ConfigError(f"classes: the model returns {getattr(out, 'shape', type(out).__name__)}, not N×C logits",
                          param="classes")
    width = int(out.shape[1])
    n_logits = None
    if multilabel:
        if width != len(cls):
            raise ConfigError(f"classes: the model gives {width} outputs but {len(cls)} findings are listed "
                              "(task='multilabel': one sigmoid logit per finding, in order)", param="classes")
    else:
        if binary_logit is None and width == 1 and len(cls) == 2:
            binary_logit = 0
        if binary_logit is not None:
            if not (isinstance(binary_logit, int) and not isinstance(binary_logit, bool)
                    and 0 <= binary_logit < width):
                raise ConfigError(f"binary_logit: expected an output index in [0, {width}), got {binary_logit!r}",
                                  param="binary_logit")
            if len(cls) != 2:
                raise ConfigError(f"classes: a sigmoid output audited as binary needs two classes [negative, "
                                  f"positive], got {len(cls)}", param="classes")
            n_logits = width
            model.register_forward_hook(BinaryLogit(binary_logit))
        elif width != len(cls):
            raise ConfigError(f"classes: the model gives {width} logits but {len(cls)} classes are listed",
                              param="classes")
    run = RunConfig(model_name=name or type(module).__name__, source="module", classes=cls, input=spec,
                    positive_class=positive, binary_logit=binary_logit, n_logits=n_logits,
                    checkpoint_sha256=weights_sha256(module), task=task, op_threshs=thr,
                    weights_note="an in-memory torch.nn.Module (checkpoint_sha256: SHA-256 of its state_dict)")
    return model, run


def _dataframe_manifest(df: pd.DataFrame, out: Path, root: PathLike | None) -> tuple[Path, str]:
    """Write the DataFrame manifest as out/manifest.dataframe.csv; (its path, the image root: `root`, else the
    current folder, absolute)."""
    if df.empty:
        raise ManifestError("manifest_or_dataframe: the DataFrame has no rows", param="manifest_or_dataframe")
    base = Path(root) if root is not None else Path.cwd()
    if root is not None and not base.is_dir():
        raise ManifestError(f"root: {base} is not a folder (relative image paths are read under it)", param="root")
    path = out / DATAFRAME_MANIFEST
    df.to_csv(path, index=False)
    return path, str(base.resolve())


def run_audit(run_dir_or_model: PathLike | torch.nn.Module, manifest_or_dataframe: PathLike | pd.DataFrame | None
              = None, *, preset: PathLike | None = None, out: PathLike | None = None, root: PathLike | None = None,
              classes: Sequence[str] | None = None, input: InputSpec | Mapping | None = None,
              input_size: int | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
              binary_logit: int | None = None, name: str | None = None, task: str | None = None,
              thresholds: Sequence[float] | Mapping[str, float] | None = None, progress: Progress | None = None,
              **options: Any) -> AuditResult:
    """Audit a classifier's Grad-CAM evidence against the preset's regions; returns an `AuditResult`.

    run_dir_or_model: a training run directory (config.yaml or timm args.yaml + checkpoint; docs/run_dir.md), or
        an in-memory torch.nn.Module returning N×C logits. A module needs `classes` and its preprocessing
        (`input`, or input_size / mean / std; a timm model's pretrained_cfg fills what is not given); it is
        deep-copied and never changed (mode, requires_grad, device, weights). Its device is the default `device`.
    manifest_or_dataframe: a manifest CSV path (relative image paths are relative to its folder), or a DataFrame
        with the same columns (image[, label, split, mask, image_id, metadata...]; relative paths are relative
        to `root`, default the current folder); None: the run's data.manifest.
    preset: a YAML preset (configs/*.yaml): regions, gates, data mapping, `audit:` options.
    out: the output folder; None writes to a new temporary folder (tempfile.mkdtemp, prefix "audit_") that is
        kept, so that `result.maps` and `result.show` can read it: delete `result.out_dir` when done.
    binary_logit: audit this sigmoid output of a module as a binary model (a one-output module with two classes
        is one); name: the model's name in the summary (default the module's class name).
    task: a module's outputs: "multiclass" (default; N×C softmax logits) or "multilabel" (one sigmoid logit per
        finding, `classes` = the findings in logit order; inferred for a torchxrayvision model): every finding is
        audited in one pass (docs/multilabel.md); the options `findings`, `uncertain`, `maps` apply.
    thresholds: multi-label module only: each finding's decision threshold on σ(logit), a sequence in logit order
        or {finding: probability}; default 0.5 (a torchxrayvision model's op_threshs where it carries them).
    progress: called as progress(done, total) after each batch.
    options: the `AuditConfig` fields (batch_size, device, split, limit, workers, layer, target, positive, by,
        seed, n_boot, min_n, high_conf, counterfactual, discover, sanity, sensitivities, amp, ...; with a run dir
        also arch, source, checkpoint, classes). They override the preset's `audit:` section.

    Raises TypeError for an unknown keyword; ConfigError (a ValueError; `.param` names the parameter, e.g.
    "batch_size: expected a positive integer, got 0"), RunDirError, ManifestError for bad input.

    Example::

        result = audit.run_audit(model, df, classes=["nv", "mel"], input_size=224, mean=(0.5,) * 3,
                                 std=(0.5,) * 3, preset="configs/isic.yaml", positive="mel")
        result.summary.accuracy, result.per_image.head(), result.show(result.per_image.image_id[0])
    """
    from .pipeline import run_audit as pipeline_audit
    is_module = isinstance(run_dir_or_model, torch.nn.Module)
    allowed = [k for k in OPTIONS if not (is_module and k in RUN_DIR_ONLY) and k != "classes"]  # classes: named
    _check_options(options, "run_audit", allowed)
    if not is_module:
        for k, v in (("input", input), ("input_size", input_size), ("mean", mean), ("std", std),
                     ("binary_logit", binary_logit), ("name", name), ("task", task), ("thresholds", thresholds)):
            if v is not None:
                where = ("its checkpoint's op_threshs (docs/multilabel.md)" if k == "thresholds" else
                         "its config.yaml (docs/run_dir.md)")
                raise TypeError(f"run_audit(): {k} is for an in-memory model; a run directory declares it in "
                                f"{where}")
        if not isinstance(run_dir_or_model, (str, os.PathLike)):
            raise TypeError(f"run_dir_or_model: expected a run directory path or a torch.nn.Module, got "
                            f"{type(run_dir_or_model).__name__}")
    is_df = isinstance(manifest_or_dataframe, pd.DataFrame)
    if not (is_df or manifest_or_dataframe is None or isinstance(manifest_or_dataframe, (str, os.PathLike))):
        raise TypeError(f"manifest_or_dataframe: expected a CSV path or a pandas DataFrame, got "
                        f"{type(manifest_or_dataframe).__name__}")
    if root is not None and not is_df:
        raise TypeError("run_audit(): root is for a DataFrame manifest (a CSV's relative paths are relative to its "
                        "folder, or to the preset's data.image_root)")
    opts = dict(options)
    if is_module and "device" not in opts:
        dev = _module_device(run_dir_or_model)
        opts["device"] = str(dev) if dev.type in ("cuda", "mps") else "cpu"
    if not is_module:
        opts["run_dir"] = os.fspath(run_dir_or_model)
        if classes is not None:
            opts["classes"] = list(classes)
    out_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="audit_"))
    opts["out"] = str(out_dir)
    if manifest_or_dataframe is not None and not is_df:
        opts["data"] = os.fspath(manifest_or_dataframe)
    cfg = resolve_config(opts, preset)  # every option validated here, before any work
    loaded = None
    if is_module:
        spec = module_input_spec(run_dir_or_model, input, input_size, mean, std)
        loaded = module_run(run_dir_or_model, classes, spec, name=name, binary_logit=binary_logit,
                            positive=cfg.positive, task=task, thresholds=thresholds)
        if cfg.findings and not loaded[1].multilabel:
            raise ConfigError("findings: the model is audited as single-label; pass task='multilabel' for one "
                              "sigmoid output per finding", param="findings")
        if manifest_or_dataframe is None:
            raise ManifestError("manifest_or_dataframe: an in-memory model has no run config to name its manifest; "
                                "pass a CSV path or a DataFrame", param="manifest_or_dataframe")
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_df:
        path, image_root = _dataframe_manifest(manifest_or_dataframe, out_dir, root)
        cfg.data = str(path)
        cfg.data_spec = {**(cfg.data_spec or {}), "image_root": image_root}
    res = pipeline_audit(cfg, progress=progress, loaded=loaded)
    return AuditResult(out_dir=Path(res.out_dir), per_image=res.per_image, summary=res.summary,
                       errors=_errors_frame(Path(res.out_dir)))


# ================================================================================================ the others

def render_reports(result: AuditResult | PathLike, out: PathLike | None = None, *, n_per_group: int = 8,
                   blocky: bool = False, seed: int = 0) -> dict[str, Path]:
    """Write report.html, GALLERY.md, gallery/ and plots/ of an audit (`audit.report.render_reports`).

    result: an AuditResult or an audit folder. out: where to write them; None (default) next to the audit's files;
    another folder gets a copy of the audit's files first (cache/ excepted), so that it is complete on its own.
    Returns {"html": path, "gallery_md": path, "gallery": folder, "plot_<name>": path, ...}."""
    from .report import render_reports as _render
    src = Path(result.out_dir if isinstance(result, AuditResult) else result)
    dst = Path(out) if out is not None else src
    if dst.resolve() != src.resolve():
        shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("cache", ".*"))
    if (dst / "summary.json").is_file() and json.loads((dst / "summary.json").read_text()).get("task") \
            == "multilabel":
        from .report.multilabel import render_multilabel_reports
        return render_multilabel_reports(dst, n_per_group=min(n_per_group, 4), blocky=blocky)
    return _render(dst, n_per_group=n_per_group, blocky=blocky, seed=seed)


def discover(result: AuditResult | PathLike, *, k: int | None = None, seed: int = 0, min_n: int = 10,
             n_slices: int = 8):
    """Explanation clusters and error slices of an audit (`audit.discover.discover`); returns its
    DiscoverResult (summary, assignments, groups, out_dir). Writes discover.csv and discover/ into the audit
    folder and the `discover` section into its summary.json (as `cli.py discover` does); when `result` is an
    AuditResult its summary is refreshed. k: clusters per predicted class (None: eigengap); min_n: smaller
    groups are described, not ranked."""
    from .discover import discover as _discover, record_in_summary
    for pname, v in (("k", k), ("min_n", min_n), ("n_slices", n_slices)):
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise ConfigError(f"{pname}: expected a positive integer, got {v!r}", param=pname)
    if not (isinstance(seed, int) and 0 <= seed < 2 ** 32):
        raise ConfigError(f"seed: expected an integer in [0, 2^32), got {seed!r}", param="seed")
    out = Path(result.out_dir if isinstance(result, AuditResult) else result)
    res = _discover(out, k=k, seed=seed, min_n=min_n, n_slices=n_slices)
    s = record_in_summary(out, res.summary)
    if s is not None and isinstance(result, AuditResult):
        result.summary = as_summary(s)
    return res


def scan(manifest_or_dataframe: PathLike | pd.DataFrame, preset: PathLike, *, out: PathLike | None = None,
         root: PathLike | None = None, label_col: str | None = None, run_dir: PathLike | None = None,
         progress: Progress | None = None, **options: Any):
    """Artifact prevalence, label association and split leakage of a dataset, no model needed
    (`audit.scan.run_scan`; docs/scan.md). Returns its ScanResult (per_image, summary = scan.json, out_dir,
    errors).

    manifest_or_dataframe: a manifest CSV, or a DataFrame (relative image paths under `root`, default the current
    folder). preset: the YAML preset whose artifact regions are scanned. out: None → a new temporary folder
    (kept). label_col: the manifest column holding the label. run_dir: a trained run whose metrics are compared
    with and without each artifact. options: by, id_col, flag_cols, positive, workers, limit, phash_threshold,
    detail_threshold, min_n, top_k, alpha, batch_size, device, n_boot, seed (`audit.scan.ScanConfig`'s fields;
    explicit > the preset's `scan:` section > defaults; the resolved ones are scan.json's `options`)."""
    from .scan import prepare_scan, run_scan
    from .scan.config import OPTION_NAMES, ScanConfig
    _check_options(options, "scan", OPTION_NAMES)
    out_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="scan_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(manifest_or_dataframe, pd.DataFrame):
        from audit.config import load_preset

        from .manifest import DataSpec, load_manifest
        from .scan import scan_input_spec
        path, image_root = _dataframe_manifest(manifest_or_dataframe, out_dir, root)
        pre = load_preset(preset)
        data_d = dict(pre.get("data") or {})
        if label_col:
            data_d["columns"] = {**dict(data_d.get("columns") or {}), "label": label_col}
        data_d["image_root"] = image_root
        manifest = load_manifest(path, DataSpec.from_dict(data_d), require_label=False)
        spec = scan_input_spec(pre)
    elif isinstance(manifest_or_dataframe, (str, os.PathLike)):
        if root is not None:
            raise TypeError("scan(): root is for a DataFrame manifest")
        pre, manifest, spec = prepare_scan(manifest_or_dataframe, preset, label_col=label_col)
    else:
        raise TypeError(f"manifest_or_dataframe: expected a CSV path or a pandas DataFrame, got "
                        f"{type(manifest_or_dataframe).__name__}")
    cfg = ScanConfig.resolve(pre, **options)
    return run_scan(pre, manifest, out_dir, spec, cfg, run_dir=None if run_dir is None else os.fspath(run_dir),
                    progress=progress)


def compare(baseline: AuditResult | PathLike, candidate: AuditResult | PathLike, *,
            gates: Mapping[str, float] | Sequence[str] | None = None, out: PathLike | None = None,
            n_boot: int | None = None, seed: int | None = None, gallery_n: int = 6, report: bool = True):
    """The candidate model against the baseline on the same images, paired (`audit.compare.compare_audits`;
    docs/compare.md). Returns the Comparison (figures with paired 95% CIs, gates, verdict "pass" / "fail" /
    "inconclusive" / "none", per_image). gates: non-inferiority margins, e.g. {"max_sensitivity_drop": 0.02}.
    out: also write compare.json, pairs.csv (and with report, compare.html and the gallery) there."""
    from .compare import compare_audits
    from .compare_report import write_compare
    a = baseline.out_dir if isinstance(baseline, AuditResult) else Path(baseline)
    b = candidate.out_dir if isinstance(candidate, AuditResult) else Path(candidate)
    c = compare_audits(a, b, gates=gates, n_boot=n_boot, seed=seed)
    if out is not None:
        write_compare(c, Path(out), gallery_n=gallery_n, report=report)
    return c
