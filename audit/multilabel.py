"""Multi-label audits: one sigmoid output per finding (CheXpert, NIH ChestX-ray14, MIMIC-CXR, torchxrayvision).

A run dir declares `model.task: multilabel` (inferred for `model.source: torchxrayvision`) and `classes` = the
findings in logit order. Truth comes from the manifest, one column per finding named as the finding:
1 positive, 0 negative, blank missing, −1 uncertain (CheXpert), read under `uncertain: ignore | zeros | ones`
(run config top level, or --uncertain; default ignore = missing). A finding's figures use only the images
labelled for it, and say so with their n.

One pass for all findings (`multilabel_grad_cam`): one forward per batch; when the explained layer is followed
by global average pooling (optionally after a ReLU) and a linear head, the gradient of every finding is
closed-form, ∂y_f/∂A_kij = W_fk·m_kij/(h·w) (m = 1, or [A_kij > 0] after a ReLU), so F findings' Grad-CAM weights
are w_fk = W_fk·mean_ij(m_kij)/(h·w) and their maps one batched contraction. The head's form is verified on every
batch against one autograd backward through the head only (a random combination of the logits); any other head
falls back to one autograd backward per finding through the part of the network after the layer.

Files (besides per_image.csv, summary.json, config.resolved.yaml):
  per_finding.csv  one row per (image, audited finding): image_id, finding, label (1/0/NaN), logit, p, pred
                   (p ≥ the finding's threshold), correct (NaN when unlabelled), confidence (p if pred else 1 − p),
                   map (index into cams.npz's `cam`, −1 = no map), region columns frac_/area_/lift_/hit_/
                   fraclayer_ (NaN without a map), cf_flip_<r>, cf_delta_<r> (counterfactual, NaN = not tested),
                   flag_high_conf_error, flag_false_negative;
  cams.npz         image_id (N str), finding (F str, the audited findings), logits (N×F float32), threshold
                   (F float64, probabilities), cam (P×h×w float32, raw maps at layer resolution, never min-maxed),
                   pair_image (P int64 row of image_id), pair_finding (P int64 index into finding), layer (str),
                   embedding (N×K float32), head ("closed-form" | "autograd").
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .cam import _frozen, as_maps, default_layer, get_module
from .errors import ConfigError, ManifestError, UndefinedMetricWarning
from .stats import NAN, Estimate, bootstrap_ci, proportion_ci, region_stats
from .stream import Progress

if TYPE_CHECKING:
    from .summary_types import Gate, VerdictDetail

UNCERTAIN = ("ignore", "zeros", "ones")


# ----------------------------------------------------------------------------------------------------------------
# labels

def finding_labels(rows: pd.DataFrame, findings: Sequence[str], uncertain: str = "ignore",
                   path: str | Path = "manifest") -> tuple[np.ndarray, np.ndarray]:
    """(labels N×F float64 in {1, 0, NaN}, uncertain counts F int64) from one manifest column per finding.

    Cells: 1 / 1.0 positive, 0 / 0.0 negative, blank missing (NaN), −1 uncertain → NaN (ignore), 0 (zeros) or
    1 (ones). ManifestError naming the file, column and row for a missing column or another value."""
    if uncertain not in UNCERTAIN:
        raise ConfigError(f"uncertain: expected one of {', '.join(UNCERTAIN)}, got {uncertain!r}", param="uncertain")
    missing = [f for f in findings if f not in rows.columns]
    if missing:
        raise ManifestError(f"{path}: no label column for finding(s) {missing} (a multi-label manifest has one "
                            "column per finding: 1, 0, blank = missing, -1 = uncertain)")
    y = np.full((len(rows), len(findings)), np.nan)
    n_unc = np.zeros(len(findings), np.int64)
    fill = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}[uncertain]
    for j, f in enumerate(findings):
        col = rows[f]
        v = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
        blank = col.isna().to_numpy() | (col.astype(str).str.strip() == "").to_numpy()
        bad = ~blank & ~np.isin(v, (0.0, 1.0, -1.0))
        if bad.any():
            i = int(bad.argmax())
            raise ManifestError(f"{path}: column {f!r} row {i + 2} holds {col.iloc[i]!r}; expected 1, 0, -1 "
                                "(uncertain) or blank (missing)")
        unc = ~blank & (v == -1.0)
        n_unc[j] = int(unc.sum())
        v = np.where(blank, np.nan, v)
        y[:, j] = np.where(unc, fill, v)
    return y, n_unc


def select_findings(classes: list[str], wanted: Sequence[str] | None) -> list[int]:
    """Indices of the audited findings (--findings a,b,c; default all, in logit order); ConfigError otherwise."""
    if not wanted:
        return list(range(len(classes)))
    unknown = [f for f in wanted if f not in classes]
    if unknown:
        raise ConfigError(f"findings: {unknown} not among the model's findings {classes}", param="findings")
    return [classes.index(f) for f in dict.fromkeys(wanted)]


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


# ----------------------------------------------------------------------------------------------------------------
# one pass, every finding

@dataclass
class MultiCamBatch:
    """logits: N×C float32 (all outputs); cams: N×F×h×w float32 raw maps (ReLU'd) of the requested findings
    (zeros where `need` was False); features: N×K pooled layer activations; head: "closed-form" | "autograd"."""

    logits: torch.Tensor
    cams: torch.Tensor
    features: torch.Tensor
    head: str


def _linear_head(model: torch.nn.Module, k: int, c: int) -> torch.nn.Linear | None:
    """The last nn.Linear taking K features to the C outputs, or None."""
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.in_features == k
             and m.out_features == c]
    return heads[-1] if heads else None


def _closed_form_weights(model, A: torch.Tensor, logits: torch.Tensor, probe: torch.Tensor | None
                         ) -> torch.Tensor | None:
    """Grad-CAM weights N×C×K of every output when the head is [ReLU] → global average pool → linear, else None.

    A: N×K×h×w maps; logits: N×C; probe: ∂(Σ_n v·z_n)/∂A (N×K×h×w) from autograd for a fixed random v, the check
    that tells a ReLU from none where A ≥ 0 (None: skip the check, e.g. under no_grad)."""
    n, k, h, w = A.shape
    head = _linear_head(model, k, logits.shape[1])
    if head is None:
        return None
    Wt = head.weight.detach().float()
    a = A.detach().float()
    scale = 1.0 + float(logits.detach().abs().max())
    for relu in (False, True):
        g = F.relu(a) if relu else a
        z = g.mean(dim=(2, 3)) @ Wt.T + (head.bias.detach().float() if head.bias is not None else 0.0)
        if not torch.allclose(z, logits.detach().float(), rtol=0, atol=1e-3 * scale):
            continue
        m = (a > 0).float() if relu else torch.ones_like(a)
        if probe is not None:
            v = _probe_vector(logits.shape[1], logits.device)
            expect = (v @ Wt)[None, :, None, None] * m / (h * w)
            pr = probe.float()
            if not torch.allclose(expect, pr, rtol=1e-4, atol=1e-6 * (1.0 + float(pr.abs().max()))):
                continue
        s = m.mean(dim=(2, 3))  # N×K
        return Wt[None] * s[:, None, :] / (h * w)  # N×C×K
    return None


def _probe_vector(c: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(12345)
    return (torch.rand(c, generator=g) + 0.5).to(device)


def multilabel_grad_cam(model: torch.nn.Module, x: torch.Tensor, layer: str | torch.nn.Module,
                        findings: Sequence[int] | None = None, need: torch.Tensor | None = None,
                        method: str = "auto") -> MultiCamBatch:
    """Grad-CAM of several outputs of one batch from one forward.

    x: N×C×S×S on the model's device. findings: the output indices explained (default all C), F of them.
    need: optional N×F bool, the (image, finding) pairs wanted (the autograd fallback backpropagates only the
    findings some image needs; the closed form computes all, cheaply). method: "auto" (closed form where the head
    allows it, verified per batch, else autograd) or "autograd" (one backward per finding, the reference).
    Returns raw maps N×F×h×w (float32, ≥ 0, layer resolution): for output f exactly Grad-CAM of logit f
    (`audit.cam.grad_cam(model, x, layer, target=f)`). The model's modes and requires_grad flags are restored and
    the hook removed in `finally`; the caller's model is otherwise untouched."""
    module = get_module(model, layer) if isinstance(layer, str) else layer
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _inp, out):
        leaf = out.detach().requires_grad_(True)
        store["A"] = leaf
        return leaf.clone()

    handle = module.register_forward_hook(hook)
    head = "autograd"
    try:
        with _frozen(model), torch.enable_grad():
            logits = model(x.detach())
            if "A" not in store:
                raise ConfigError(f"layer {layer!r} was not called in the forward pass; choose another layer (--layer)")
            A = store["A"]
            maps = as_maps(model, A.detach(), str(layer))
            c = logits.shape[1]
            fidx = list(range(c)) if findings is None else [int(f) for f in findings]
            nf = len(fidx)
            wts = None
            if method == "auto" and maps.shape == A.shape and maps.data_ptr() == A.data_ptr():  # N×K×h×w as is
                v = _probe_vector(c, logits.device)
                (probe,) = torch.autograd.grad((logits * v).sum(), A, retain_graph=True)
                wts = _closed_form_weights(model, maps, logits, probe)
            if wts is not None:
                head = "closed-form"
                w = wts[:, fidx, :]  # N×F×K
            else:
                n = logits.shape[0]
                w = torch.zeros(n, nf, maps.shape[1], device=maps.device)
                want = need.any(0).tolist() if need is not None else [True] * nf
                for j, f in enumerate(fidx):
                    if not want[j]:
                        continue
                    (g,) = torch.autograd.grad(logits[:, f].sum(), A, retain_graph=j < nf - 1)
                    w[:, j] = as_maps(model, g, str(layer)).float().mean(dim=(2, 3))
    finally:
        handle.remove()
        store.clear()
    with torch.no_grad():
        a = maps.float()
        cams = F.relu(torch.einsum("nfk,nkhw->nfhw", w.float(), a))
        if need is not None:
            cams = cams * need[:, :, None, None].to(cams.device, cams.dtype)
        feats = a.mean(dim=(2, 3))
    return MultiCamBatch(logits=logits.detach().float(), cams=cams, features=feats, head=head)


# ----------------------------------------------------------------------------------------------------------------
# statistics per finding

def auroc_estimate(score: np.ndarray, y: np.ndarray, n_boot: int = 1000, seed: int = 0, min_n: int = 10
                   ) -> dict:
    """AUROC (Mann–Whitney U / (n_pos·n_neg), ties half) with a percentile-bootstrap 95% CI over images.

    score: (n,) finite; y: (n,) bool. Too small when n_pos or n_neg < min_n (value NaN, too_small); one class
    only → NaN with an UndefinedMetricWarning."""
    from scipy.stats import rankdata
    score, y = np.asarray(score, np.float64), np.asarray(y, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    note = f"n_pos={n_pos}, n_neg={n_neg}"
    if n_pos == 0 or n_neg == 0:
        warnings.warn(f"AUROC undefined, one class only ({note}): NaN", UndefinedMetricWarning, stacklevel=2)
        return Estimate(NAN, n=len(y), note=f"one class only ({note})").to_dict()
    if min(n_pos, n_neg) < min_n:
        return Estimate(NAN, n=len(y), too_small=True, note=f"too small ({note}; min_n={min_n})").to_dict()

    def auc(s, t):
        r = rankdata(s)
        npos = t.sum()
        return (r[t].sum() - npos * (npos + 1) / 2) / (npos * (len(t) - npos))
    value = float(auc(score, y))

    def boot(s, t):
        if t.all() or not t.any():
            return np.nan
        return auc(s, t)
    lo, hi = bootstrap_ci((score, y), boot, n_boot=n_boot, seed=seed)
    return Estimate(value, lo, hi, len(y), note=note).to_dict()


def median_estimate(x: np.ndarray, n_boot: int, seed: int, min_n: int) -> dict:
    """Median with a bootstrap 95% CI over the finite values; too small below min_n."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if len(x) < max(min_n, 1):
        return Estimate(NAN, n=len(x), too_small=True, note=f"too small (n={len(x)} < min_n={min_n})").to_dict()
    lo, hi = bootstrap_ci(x, lambda a: np.median(a, axis=1), n_boot=n_boot, seed=seed, vectorized=True)
    return Estimate(float(np.median(x)), lo, hi, len(x)).to_dict()


def rate_estimate(k: int, n: int, min_n: int) -> dict:
    if n < max(min_n, 1):
        return Estimate(NAN, n=n, too_small=True, note=f"too small (n={n} < min_n={min_n})").to_dict()
    return proportion_ci(k, n).to_dict()


def finding_summary(long: pd.DataFrame, finding: str, kinds: dict[str, str], cfg, val: tuple | None,
                    threshold: float, n_uncertain: int) -> dict:
    """Every figure of one finding from its rows of per_finding.csv (see the module docstring).

    val: (logits (m,), labels (m,) in {1, 0, NaN}) of the validation split, or None (thresholds cross-fitted)."""
    from .thresholds import operating_points
    d = long[long["finding"] == finding]
    lab = d["label"].to_numpy(np.float64)
    ok = np.isfinite(lab)
    y = lab[ok] == 1
    z = d["logit"].to_numpy(np.float64)[ok]
    pred = d["pred"].to_numpy(bool)[ok]
    conf = d["confidence"].to_numpy(np.float64)[ok]
    n, n_pos = int(ok.sum()), int(y.sum())
    min_n, nb, seed = cfg.min_n, cfg.n_boot, cfg.seed
    out: dict = {"n_images": int(len(d)), "n": n, "n_pos": n_pos, "n_neg": n - n_pos,
                 "n_missing": int((~ok).sum()), "n_uncertain": int(n_uncertain),
                 "labelled_note": f"{n} of {len(d)} images labelled for {finding} ({n_pos} positive)",
                 "threshold": threshold, "n_maps": int((d["map"] >= 0).sum())}
    out["prevalence"] = rate_estimate(n_pos, n, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        out["auroc"] = auroc_estimate(z, y, nb, seed, min_n)
        tp, fn = int((pred & y).sum()), int((~pred & y).sum())
        tn, fp = int((~pred & ~y).sum()), int((pred & ~y).sum())
        out["decision"] = {"tp": tp, "fn": fn, "tn": tn, "fp": fp,
                           "sensitivity": rate_estimate(tp, tp + fn, 1), "specificity": rate_estimate(tn, tn + fp, 1)}
        out["false_negatives"] = {"n": fn, "rate": rate_estimate(fn, n_pos, 1),
                                  "image_ids": d["image_id"].to_numpy()[ok][~pred & y][:20].tolist()}
        hce = (pred != y) & (conf >= cfg.high_conf)
        out["high_conf_errors"] = {"rate": rate_estimate(int(hce.sum()), n, 1), "n_errors": int(hce.sum()),
                                   "high_conf": cfg.high_conf}
        vz = vy = None
        if val is not None:
            vl = np.asarray(val[1], np.float64)
            vok = np.isfinite(vl) & np.isfinite(np.asarray(val[0], np.float64))
            vz, vy = np.asarray(val[0], np.float64)[vok], vl[vok] == 1
            if not vy.any():
                vz = vy = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            op = (operating_points(z, y, vz, vy, targets=tuple(cfg.sensitivities), seed=seed, positive_name=finding)
                  if n else None)
        if op is not None:
            for pt in op["points"]:
                t = pt["threshold"]
                pt["threshold_logit"] = t
                pt["threshold"] = float(1 / (1 + math.exp(-t))) if np.isfinite(t) else NAN
                pt.pop("fold_thresholds", None)
        out["operating_points"] = op
        regs: dict = {}
        lab_all = d["label"].to_numpy(np.float64)
        has = (d["map"] >= 0).to_numpy() & np.isfinite(lab_all)
        for r, kind in kinds.items():
            col = f"frac_{r}"
            if col not in d:
                continue
            frac = d[col].to_numpy(np.float64)
            lift = d[f"lift_{r}"].to_numpy(np.float64)
            present = np.isfinite(frac) & has  # maps of images labelled for the finding
            e: dict = {"kind": kind, "n_present": int(present.sum()),
                       "median_frac": median_estimate(frac[present], nb, seed, min_n),
                       "lift": median_estimate(lift[present], nb, seed, min_n)}
            if has.sum():
                st = region_stats(frac[has], d["correct"].to_numpy(np.float64)[has] == 1,
                                  d["confidence"].to_numpy(np.float64)[has], n_boot=nb, seed=seed, min_n=min_n)
                e["link"] = {k: st[k].to_dict() for k in ("spearman_conf_all", "diff_median", "auroc_error")}
            regs[r] = e
        out["regions"] = regs
        cf: dict = {}
        for c in [c for c in d.columns if c.startswith("cf_flip_")]:
            r = c[len("cf_flip_"):]
            flip = d[c].to_numpy(np.float64)[ok]
            delta = d[f"cf_delta_{r}"].to_numpy(np.float64)[ok]
            t = np.isfinite(flip)
            e = {"n": int(t.sum()), "n_flips": int(flip[t].sum()),
                 "flip_rate": rate_estimate(int(flip[t].sum()), int(t.sum()), min_n)}
            if t.sum() >= max(min_n, 1):
                lo, hi = bootstrap_ci(delta[t], lambda a: a.mean(axis=1), n_boot=nb, seed=seed, vectorized=True)
                e["mean_delta"] = Estimate(float(delta[t].mean()), lo, hi, int(t.sum())).to_dict()
            else:
                e["mean_delta"] = Estimate(NAN, n=int(t.sum()), too_small=True).to_dict()
            cf[r] = e
        if cf:
            out["counterfactual"] = cf
    return out


# ----------------------------------------------------------------------------------------------------------------
# gates per finding

def _per_finding(t, findings: list[str], name: str) -> dict[str, float]:
    """A gate's threshold for each finding it covers: a number covers every finding, a mapping the ones named."""
    if isinstance(t, dict):
        unknown = [f for f in t if f not in findings]
        if unknown:
            raise ConfigError(f"gates.{name}: finding(s) {unknown} not among the audited findings {findings}")
        return {str(f): v for f, v in t.items()}
    return {f: t for f in findings}


def evaluate_multilabel_gates(gates: dict, summary: dict, policy: str | None = None
                              ) -> tuple[list[Gate], VerdictDetail]:
    """(entries, verdict detail) of the gates over the findings: each gate as a number (every finding) or a mapping
    {finding: threshold}; entries named gate[finding] or gate[finding][region] (see audit/gates.py for the names,
    plus min_auroc). A gate that could not be measured is undefined; the verdict follows `audit.gates.decide_verdict`
    under the policy (`gates.undefined`, default inconclusive)."""
    from .gates import KNOWN, _check_threshold, _entry, decide_verdict, split_policy
    findings = list(summary.get("findings", {}))
    gates, own = split_policy(gates)
    out: list[dict] = []
    for name, t_all in gates.items():
        if name not in KNOWN and not name.startswith("min_sensitivity_at_"):
            raise ConfigError(f"gates.{name}: unknown gate; expected one of {', '.join(KNOWN)}, min_sensitivity_at_<s>")
        for f, t in _per_finding(t_all, findings, name).items():
            t = _check_threshold(name, t)
            s = summary["findings"][f]
            regs = s.get("regions", {})
            if name == "min_auroc":
                out.append(_entry(f"{name}[{f}]", s.get("auroc"), t, True))
            elif name.startswith("min_sensitivity_at_"):
                target = float(name[len("min_sensitivity_at_"):])
                pts = (s.get("operating_points") or {}).get("points") or []
                pt = next((p for p in pts if abs(p["target_sensitivity"] - target) < 1e-9), None)
                out.append(_entry(f"{name}[{f}]", None if pt is None else pt["sensitivity"], t, True,
                                  "" if pt else f"no operating point for sensitivity {target} (audit.sensitivities)"))
            elif name == "max_high_conf_error_rate":
                out.append(_entry(f"{name}[{f}]", s["high_conf_errors"]["rate"], t, False))
            elif name in ("max_artifact_lift", "min_median_target_frac"):
                kind = "artifact" if name == "max_artifact_lift" else "target"
                sel = {r: e for r, e in regs.items() if e["kind"] == kind}
                if not sel:
                    out.append(_entry(f"{name}[{f}]", None, t, kind == "target", f"no {kind} region configured"))
                for r, e in sel.items():
                    est = e["lift"] if kind == "artifact" else e["median_frac"]
                    out.append(_entry(f"{name}[{f}][{r}]", est, t, kind == "target"))
            elif name == "max_counterfactual_flip_rate":
                cf = s.get("counterfactual")
                if not cf:
                    out.append(_entry(f"{name}[{f}]", None, t, False, "counterfactual check not run"))
                for r, e in (cf or {}).items():
                    out.append(_entry(f"{name}[{f}][{r}]", e["flip_rate"], t, False))
            else:  # min_accuracy, max_sanity_correlation: single-label figures
                out.append(_entry(f"{name}[{f}]", None, t, True, "not defined for a multi-label audit"))
    return out, decide_verdict(out, policy or own or "inconclusive")


# ----------------------------------------------------------------------------------------------------------------
# the audit

def run_multilabel_audit(cfg, model: torch.nn.Module, run, progress: Progress | None = None):
    """The multi-label audit (called by `audit.pipeline.run_audit` for a run with model.task: multilabel)."""
    from .config import write_resolved
    from .counterfactual import edited_outputs
    from .data import make_loader, with_row
    from .manifest import default_split, load_manifest, select_split, split_note
    from .common import (PipelineResult, VALIDATION_SPLITS, build_region_fn, manifest_source,
                         run_name)
    from .predict import dist_info, model_for_cam, predict_logits, resolve_device
    from .preprocess import normalize
    from .scores import region_columns, score_batch
    from .spill import SpillArray, write_npz
    from .stream import stream_batches, write_errors
    from .summary_types import jsonable

    t0 = time.perf_counter()
    unsupported = [o for o, on in (("--discover", cfg.discover), ("--sanity", cfg.sanity), ("--by", bool(cfg.by)),
                                   ("torchrun", dist_info()[1] > 1)) if on]
    if unsupported:
        raise ConfigError(f"{', '.join(unsupported)}: not available for a multi-label audit yet (docs/multilabel.md)")
    device = resolve_device(cfg.device)
    fidx = select_findings(run.classes, cfg.findings)
    findings = [run.classes[i] for i in fidx]
    uncertain = cfg.uncertain or run.uncertain
    path, data_spec = manifest_source(cfg, run)
    full = load_manifest(path, data_spec, classes=None, require_label=False)
    finding_labels(full, findings, uncertain, path)  # checks every finding's column before any work
    split = cfg.split or default_split(full, path)
    rows = select_split(full, split, path)
    if cfg.limit:
        rows = rows.iloc[: cfg.limit].reset_index(drop=True)
    Y, n_unc = finding_labels(rows, findings, uncertain, path)
    op = run.op_threshs or [0.5] * run.num_classes
    thr_p = np.array([op[i] for i in fidx], np.float64)
    thr_z = torch.tensor([logit(p) for p in thr_p], dtype=torch.float64)
    spec = run.input
    layer = cfg.layer or default_layer(model, (1, spec.channels, spec.size, spec.size))
    get_module(model, layer)
    region_fn, kinds = build_region_fn(cfg)
    artifacts = [r for r, k in kinds.items() if k == "artifact"]
    name = run_name(run)
    out = Path(cfg.out) if cfg.out else Path("reports") / name
    out.mkdir(parents=True, exist_ok=True)
    cam_model, batchnorm = model_for_cam(model, cfg, layer, spec, device)
    loader = make_loader(rows, spec, cfg.batch_size, cfg.workers, region_fn, pin_memory=device.type == "cuda")
    cams_spill = SpillArray(out, "cams")  # the maps stream to a file: memory holds the table rows only
    long_frames, pair_img, pair_f, emb_all, logit_rows, row_ids = [], [], [], [], [], []
    heads: set[str] = set()
    t_model = t_cf = 0.0
    n_maps = 0
    region_cols = region_columns(kinds)
    fi = torch.tensor(fidx)
    def on_batch(batch) -> pd.DataFrame:
        nonlocal t_model, t_cf, n_maps
        batch_recs = []
        idx = batch.idx
        x = normalize(batch.img.to(device), spec)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(Y[idx])
        tm = time.perf_counter()
        res = multilabel_grad_cam(cam_model, x, layer, fidx, None)
        t_model += time.perf_counter() - tm
        heads.add(res.head)
        z = res.logits.double().cpu()[:, fi]  # N×F
        pred = z >= thr_z[None]
        # the pairs mapped: positive in truth or predicted positive (default), or every pair (--maps all)
        need = torch.ones_like(pred) if cfg.maps == "all" else (y == 1) | pred
        masks = batch.masks or [{} for _ in idx]
        nn_, ff = torch.nonzero(need, as_tuple=True)
        pc = res.cams[nn_, ff].cpu()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            sc = score_batch(pc, [masks[int(a)] for a in nn_], kinds, spec.size, cfg.hit_tolerance) if len(nn_) else {}
        map_index = np.full((len(idx), len(fidx)), -1, np.int64)
        map_index[nn_.numpy(), ff.numpy()] = n_maps + np.arange(len(nn_))
        pos_of = {(int(a), int(b)): k for k, (a, b) in enumerate(zip(nn_.tolist(), ff.tolist()))}
        n_maps += len(nn_)
        cams_spill.append(pc.numpy().astype(np.float32))
        pair_img.append(np.asarray(idx, np.int64)[nn_.numpy()])
        pair_f.append(ff.numpy().astype(np.int64))
        emb_all.append(res.features.cpu().numpy().astype(np.float32))
        logit_rows.append(z.numpy().astype(np.float32))
        row_ids.extend(idx)
        cf_flip: dict = {}
        cf_delta: dict = {}
        if cfg.counterfactual and artifacts:
            tc = time.perf_counter()
            # the single-label check's engine (fill parameters, eval mode, no_grad, dtype); a flip is a change of
            # the finding's thresholded decision, Δ the change of σ(logit)
            ed = edited_outputs(cam_model, batch.img, masks, artifacts, spec, device, cfg.batch_size)
            if ed.pairs:
                ze = ed.outputs.double()[:, fi]
                for (j, r), zz in zip(ed.pairs, ze):
                    cf_flip[(j, r)] = ((zz >= thr_z) != pred[j]).numpy().astype(np.float64)
                    cf_delta[(j, r)] = (torch.sigmoid(zz) - torch.sigmoid(z[j])).numpy()
            t_cf += time.perf_counter() - tc
        p = torch.sigmoid(z).numpy()
        lrecs = []
        for j, i in enumerate(idx):
            r = rows.iloc[i]
            rec = {"image_id": r["image_id"], "image": r["image"], "split": r["split"], **batch.source_columns(j)}
            for k, f in enumerate(findings):
                rec[f"y_{f}"] = Y[i, k]
                rec[f"p_{f}"] = float(p[j, k])
                rec[f"logodds_{f}"] = float(z[j, k])
                rec[f"pred_{f}"] = bool(pred[j, k])
            rec.update(batch.region_columns(j))
            batch_recs.append(with_row(rec, r, skip=findings))
            for k, f in enumerate(findings):
                lab = Y[i, k]
                pr = bool(pred[j, k])
                e = {"image_id": r["image_id"], "finding": f, "label": lab, "logit": float(z[j, k]),
                     "p": float(p[j, k]), "pred": pr,
                     "correct": float(pr == (lab == 1)) if np.isfinite(lab) else np.nan,
                     "confidence": float(p[j, k] if pr else 1 - p[j, k]), "map": int(map_index[j, k])}
                q = pos_of.get((j, k))
                for col in region_cols:
                    e[col] = float(sc[col][q]) if q is not None and col in sc else np.nan
                for rg in artifacts if cfg.counterfactual else []:
                    e[f"cf_flip_{rg}"] = cf_flip[(j, rg)][k] if (j, rg) in cf_flip else np.nan
                    e[f"cf_delta_{rg}"] = cf_delta[(j, rg)][k] if (j, rg) in cf_delta else np.nan
                lrecs.append(e)
        long_frames.append(pd.DataFrame.from_records(lrecs))
        return pd.DataFrame.from_records(batch_recs)

    streamed = stream_batches(loader, rows, on_batch, progress=progress, partial=out / "per_image.partial.csv")
    errors = streamed.failures
    if not streamed.frames:
        raise ManifestError(f"{path}: none of the {len(rows)} audited images could be read "
                            f"(first error: {errors[0].reason if errors else 'none'})")
    per_image = streamed.table()
    long = pd.concat(long_frames, ignore_index=True)
    lab = long["label"].to_numpy(np.float64)
    long["flag_high_conf_error"] = np.isfinite(lab) & (long["correct"] == 0) & (long["confidence"] >= cfg.high_conf)
    long["flag_false_negative"] = (lab == 1) & ~long["pred"].astype(bool)
    per_image.to_csv(out / "per_image.csv", index=False)
    long.to_csv(out / "per_finding.csv", index=False)
    order = np.argsort(np.asarray(row_ids), kind="stable")  # one process: batches arrive in order already
    cam = cams_spill
    # pair_image indexes rows of image_id in per_image.csv order
    pos_in_table = {rid: k for k, rid in enumerate(row_ids)}
    write_npz(out / "cams.npz", {"image_id": np.array(per_image["image_id"].tolist(), dtype=str),
                                 "finding": np.array(findings, dtype=str),
                                 "logits": np.concatenate(logit_rows)[order], "threshold": thr_p,
                                 "cam": cam, "pair_image": np.array([pos_in_table[int(i)] for i in
                                                                     np.concatenate(pair_img)], np.int64),
                                 "pair_finding": np.concatenate(pair_f), "layer": np.array(layer),
                                 "embedding": np.concatenate(emb_all)[order],
                                 "head": np.array(",".join(sorted(heads)))})
    cams_spill.discard()
    write_errors(out / "errors.csv", errors)
    val_name = next((v for v in VALIDATION_SPLITS if v != split and (full["split"] == v).any()), None)
    val = None
    if val_name is not None:
        vrows = full[full["split"] == val_name].reset_index(drop=True)
        vz = predict_logits(cam_model, vrows, spec, device, cfg.batch_size, cfg.workers)
        vy, _ = finding_labels(vrows, findings, uncertain, path)
        val = (vz[:, fidx] if vz.shape[1] else np.full((len(vrows), len(fidx)), np.nan), vy)
    summary: dict = {"task": "multilabel", "findings": {}, "data": {
        "manifest": str(path), "split": split, "n": int(len(per_image)), "n_skipped": len(errors),
        "uncertain": uncertain, "validation_split": val_name,
        "tuning": "validation split" if val_name else "cross-fit on audited split (no validation split)"},
        "model": run.to_dict()["model"], "cam": {"layer": layer, "resolution": list(cam.shape[1:]),
                                                  "head": sorted(heads), "maps": cfg.maps, "n_maps": int(n_maps),
                                                  "batchnorm": batchnorm},
        "regions": kinds, "sensitivities": list(cfg.sensitivities)}
    if split_note(full, split):
        summary["data"]["split_note"] = split_note(full, split)
    for k, f in enumerate(findings):
        summary["findings"][f] = finding_summary(long, f, kinds, cfg, None if val is None else
                                                 (val[0][:, k], val[1][:, k]), float(thr_p[k]), int(n_unc[k]))
    gates, detail = evaluate_multilabel_gates(cfg.gates, jsonable(summary), cfg.undefined_gates)
    summary["gates"], summary["verdict"], summary["verdict_detail"] = jsonable(gates), detail.verdict, jsonable(detail)
    summary["comparison"] = comparison_rows(summary)
    summary["timing"] = {"total_s": round(time.perf_counter() - t0, 3), "model_s": round(t_model, 3),
                         "counterfactual_s": round(t_cf, 3)}
    summary = jsonable(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    write_resolved(out / "config.resolved.yaml", cfg, run.to_dict(),
                   {"layer": layer, "cam_resolution": list(cam.shape[1:]), "split": split, "manifest": str(path),
                    "regions": kinds, "findings": findings})
    model.cpu()
    cam_model.cpu()
    return PipelineResult(out_dir=out, per_image=per_image, summary=summary,
                       errors=errors)


# ----------------------------------------------------------------------------------------------------------------
# findings × figures

def _v(e) -> float:
    v = (e or {}).get("value") if isinstance(e, dict) else None
    return float(v) if v is not None else NAN


def comparison_rows(s: dict) -> list[dict]:
    """One row per finding with the figures the terminal and report compare (values; CIs in `findings`)."""
    target_s = 0.90 if 0.90 in s.get("sensitivities", []) else (s.get("sensitivities") or [NAN])[0]
    rows = []
    for f, e in s["findings"].items():
        pts = (e.get("operating_points") or {}).get("points") or []
        pt = next((p for p in pts if abs(p["target_sensitivity"] - target_s) < 1e-9), None)
        regs = e.get("regions", {})
        arts = {r: _v(x["lift"]) for r, x in regs.items() if x["kind"] == "artifact"}
        top = max(arts, key=lambda r: -1 if math.isnan(arts[r]) else arts[r]) if arts else None
        if top is not None and math.isnan(arts[top]):
            top = None
        tgts = {r: _v(x["median_frac"]) for r, x in regs.items() if x["kind"] == "target"}
        cf = e.get("counterfactual") or {}
        flips = {r: _v(x["flip_rate"]) for r, x in cf.items()}
        topf = max(flips, key=lambda r: -1 if math.isnan(flips[r]) else flips[r]) if flips else None
        if topf is not None and math.isnan(flips[topf]):
            topf = None
        g = [x for x in s.get("gates", []) if x["name"].split("[")[1].rstrip("]") == f] if s.get("gates") else []
        rows.append({"finding": f, "n": e["n"], "n_pos": e["n_pos"], "auroc": e["auroc"],
                     "target_sensitivity": target_s,
                     "sensitivity": pt["sensitivity"] if pt else None, "specificity": pt.get("specificity") if pt else None,
                     "false_negatives": e["false_negatives"]["n"],
                     "target_region": next(iter(tgts), None), "target_frac": next(iter(tgts.values()), None),
                     "top_artifact": top, "top_lift": arts.get(top) if top else None,
                     "top_flip_region": topf, "top_flip_rate": flips.get(topf) if topf else None,
                     "gates": None if not g else ("pass" if all(x["passed"] is True for x in g) else "fail")})
    return rows
