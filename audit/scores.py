"""Per image × region attention scores, batched in torch.

For a raw Grad-CAM map upsampled bilinearly to the model input (cam ≥ 0, never min-maxed) and a bool region mask M
on the same S×S grid:
  frac_r  = Σ cam·M / Σ cam              share of the evidence inside the region, in [0, 1]
  area_r  = mean(M)                      the region's share of the image
  lift_r  = frac_r / area_r              1 = what a uniform map would put there
  hit_r   = 1.0 if argmax(cam) ∈ M (dilated by `tolerance` px) else 0.0   pointing game (Zhang et al. 2018)
  frac_outside_r = 1 − frac_r            for target regions
  fraclayer_r = Σ cam_h×w · avgpool(M) / Σ cam_h×w  the fraction at the layer's own resolution (mask area-averaged)
  within_q__r = |M_q ∩ M_r| / |M_q|      for artifact regions q ≠ r: the share of q's pixels that lie inside r,
                                         in [0, 1] (1 = q wholly inside r: a marker inside the border band). NaN
                                         when q's mask is missing or empty or r's is missing. Removing r then also
                                         removes q (`audit.counterfactual.attribute_flips` uses it).
NaN (with `UndefinedMetricWarning`) when the CAM is all zero; NaN when the mask is missing or empty.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .cam import upsample
from .errors import UndefinedMetricWarning

EPS = 1e-12


def within_pairs(regions: dict[str, str]) -> list[tuple[str, str]]:
    """The ordered artifact pairs (q, r), q ≠ r, whose containment `within_q__r` is scored."""
    arts = [r for r, k in regions.items() if k == "artifact"]
    return [(q, r) for q in arts for r in arts if q != r]


def region_columns(regions: dict[str, str]) -> list[str]:
    """Column names `score_batch` produces for regions {name: kind}."""
    cols = []
    for r, kind in regions.items():
        cols += [f"frac_{r}", f"area_{r}", f"lift_{r}", f"hit_{r}", f"fraclayer_{r}"]
        if kind == "target":
            cols.append(f"frac_outside_{r}")
    return cols + [f"within_{q}__{r}" for q, r in within_pairs(regions)]


def _stack_masks(masks: list[dict], name: str, n: int, size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """N×S×S float mask (zeros where missing) and an N bool 'available' vector."""
    out = torch.zeros(n, size, size, device=device)
    avail = torch.zeros(n, dtype=torch.bool, device=device)
    for i, md in enumerate(masks):
        m = md.get(name)
        if m is not None:
            if tuple(m.shape) != (size, size):
                raise ValueError(f"region {name!r}: mask shape {tuple(m.shape)}, expected {(size, size)}")
            out[i] = m.to(device=device, dtype=out.dtype)
            avail[i] = True
    return out, avail


def score_batch(cams: torch.Tensor, masks: list[dict], regions: dict[str, str], size: int,
                tolerance: int = 0) -> dict[str, np.ndarray]:
    """cams: N×h×w raw maps; masks: per image {region: bool S×S tensor} (absent = missing);
    regions: {name: "target" | "artifact"}. Returns {column: float64 array of length N}."""
    n = cams.shape[0]
    out: dict[str, np.ndarray] = {}
    if not regions:
        return out
    up = upsample(cams, size)  # N×S×S, ≥ 0
    total = up.flatten(1).sum(1)
    zero = total <= EPS
    if bool(zero.any()):
        warnings.warn(f"{int(zero.sum())} of {n} CAMs are all zero: their region fractions are NaN",
                      UndefinedMetricWarning, stacklevel=2)
    flat_idx = up.flatten(1).argmax(1)
    h, w = cams.shape[-2:]
    total_l = cams.flatten(1).sum(1)
    stacked = {}
    for name, kind in regions.items():
        m, avail = _stack_masks(masks, name, n, size, up.device)
        stacked[name] = (m, avail)
        area = m.flatten(1).mean(1)
        ok = avail & (area > 0)
        frac = (up * m).flatten(1).sum(1) / total.clamp_min(EPS)
        frac = torch.where(ok & ~zero, frac, torch.full_like(frac, float("nan")))
        lift = frac / area.clamp_min(EPS)
        md = F.max_pool2d(m[:, None], 2 * tolerance + 1, stride=1, padding=tolerance)[:, 0] if tolerance > 0 else m
        hit = md.flatten(1).gather(1, flat_idx[:, None])[:, 0]
        hit = torch.where(ok & ~zero, hit, torch.full_like(hit, float("nan")))
        m_l = F.adaptive_avg_pool2d(m[:, None], (h, w))[:, 0]
        fl = (cams * m_l).flatten(1).sum(1) / total_l.clamp_min(EPS)
        fl = torch.where(ok & ~zero, fl, torch.full_like(fl, float("nan")))
        area = torch.where(avail, area, torch.full_like(area, float("nan")))
        out[f"frac_{name}"] = frac.double().cpu().numpy()
        out[f"area_{name}"] = area.double().cpu().numpy()
        out[f"lift_{name}"] = torch.where(ok, lift, torch.full_like(lift, float("nan"))).double().cpu().numpy()
        out[f"hit_{name}"] = hit.double().cpu().numpy()
        out[f"fraclayer_{name}"] = fl.double().cpu().numpy()
        if kind == "target":
            out[f"frac_outside_{name}"] = 1.0 - out[f"frac_{name}"]
    for q, r in within_pairs(regions):
        (mq, aq), (mr, ar) = stacked[q], stacked[r]
        nq = mq.flatten(1).sum(1)
        share = (mq * mr).flatten(1).sum(1) / nq.clamp_min(EPS)
        share = torch.where(aq & ar & (nq > 0), share, torch.full_like(share, float("nan")))
        out[f"within_{q}__{r}"] = share.double().cpu().numpy()
    return out
