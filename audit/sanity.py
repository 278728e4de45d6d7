"""Model-parameter randomisation test of the explanation maps (Adebayo et al., NeurIPS 2018).

A Grad-CAM map is evidence about the model only if it changes when the model's learned weights are destroyed.
`sanity_check` re-initialises parts of a *deep copy* of the model (the caller's model is never touched), recomputes
the maps on the same images for the same classes, and measures how similar they stay:

* **cascade** (top-down, Adebayo et al.): the head first, then progressively earlier units — the blocks after the
  target layer, the target layer's block, then the blocks before it — each step keeping the earlier ones
  randomised; the last step has every parameterised unit re-initialised ("full randomisation").
* **independent** (one unit at a time, on a fresh copy each time): Hedström et al. 2023 (*TMLR*, "Sanity checks
  revisited") show that the cascade alone can mislead, since once the head is random everything below reads noise.

Units are the model's top-level children that own parameters, in forward-execution order, with a container
(nn.Sequential / nn.ModuleList) of ≥ 2 parameterised children split into its children, and the path to the target
layer split until the target layer is a unit of its own (e.g. layer4 → layer4.0, layer4.1).

Re-initialisation: every submodule with `reset_parameters()` calls it (Conv/Linear: Kaiming-uniform;
BatchNorm: weight 1, bias 0, running mean 0, running var 1, so the normalisation stays finite — random normal
running variances, a known trap, can be negative and make NaN), seeded per step with `torch.random.fork_rng`
(the caller's global RNG state is unchanged). A parameter of a module without `reset_parameters` is redrawn:
matrices Kaiming-uniform, vectors normal with the parameter's own mean and standard deviation. A NaN or inf in
the recomputed maps is counted (`n_nonfinite`) and those images are excluded.

Similarity, per image, between the original and the randomised map, both bilinearly upsampled to the input grid:
Spearman's ρ (`scipy.stats.spearmanr`) on the raw maps, and SSIM (`skimage.metrics.structural_similarity`,
data_range=1) on per-map min-maxed maps; then the mean over images with a seeded percentile bootstrap CI
(`audit.stats.bootstrap_ci`). A pair where either map is constant (all zero) has no correlation: it is excluded
and counted (`n_undefined`). With masks, the mean share of the evidence in each region before and after.

Verdict: the mean ρ under full randomisation above `threshold` (default 0.5: more than half of the rank order of
the map survives destroying every learned weight) means the maps reflect the input, not the learned model, and
region fractions computed from them say little about the model. `gate_value` is that mean ρ (lower is better),
for a `max_sanity_correlation` gate.
"""
from __future__ import annotations

import copy
import time
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .cam import as_maps, get_module, grad_cam, traced_forward, upsample
from .errors import LayerError
from .stats import bootstrap_ci

__all__ = ["sanity_check", "load_sample", "randomisation_units", "reinit_module", "gradcam_explainer",
           "edge_explainer", "map_similarity", "DEFAULT_THRESHOLD"]

DEFAULT_THRESHOLD = 0.5
NAN = float("nan")
Explainer = Callable[[torch.nn.Module, torch.Tensor, str, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------
# explainers: (model, x N×C×S×S, layer path, target N int64) → N×h×w maps

def gradcam_explainer(model: torch.nn.Module, x: torch.Tensor, layer: str, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (`audit.cam.grad_cam`) raw maps at layer resolution for the given per-image classes."""
    return grad_cam(model, x, layer, target).cams


def _layer_hw(model: torch.nn.Module, x: torch.Tensor, layer: str) -> tuple[int, int]:
    shape: dict[str, tuple] = {}

    def make(_name):
        def hook(_m, _i, o):
            if isinstance(o, torch.Tensor) and "s" not in shape:
                shape["s"] = tuple(as_maps(model, o, layer).shape)  # LayerError when it is no spatial map
        return hook

    get_module(model, layer)  # LayerError with the candidates for an unknown name
    traced_forward(model, x[:1], make, names=[layer])
    if "s" not in shape:
        raise LayerError(f"layer {layer!r}: no tensor output in a forward pass; choose another layer")
    return int(shape["s"][2]), int(shape["s"][3])


def edge_explainer(model: torch.nn.Module, x: torch.Tensor, layer: str,
                   target: torch.Tensor) -> torch.Tensor:  # noqa: ARG001 (an explainer's signature; ignores target)
    """A "map" that ignores the model: the Sobel gradient magnitude of the channel-mean input, average-pooled to
    the target layer's grid (the grid is read from one forward; the weights do not enter the values).

    Under any randomisation its correlation with itself is 1 by construction: a baseline, and a known answer for
    tests (an explainer that passes no sanity check).
    """
    hw = _layer_hw(model, x, layer)
    g = x.detach().float().mean(1, keepdim=True)
    kx = torch.tensor([[-1., 0., 1.], [-2., 0., 2.], [-1., 0., 1.]], device=g.device)[None, None]
    gx = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), kx.transpose(2, 3))
    mag = torch.sqrt(gx ** 2 + gy ** 2)
    return F.adaptive_avg_pool2d(mag, hw)[:, 0]


# ----------------------------------------------------------------------------------------------------------------
# units and re-initialisation

def _has_params(m: torch.nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _execution_order(model: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    order: dict[str, int] = {}

    def make(name):
        def pre(_m, _i):
            order.setdefault(name, len(order))
        return pre

    traced_forward(model, x[:1], make, pre=True)
    return order


def randomisation_units(model: torch.nn.Module, layer: str, x: torch.Tensor) -> list[str]:
    """Dotted paths of the units randomised one by one, in forward-execution order (input → head).

    x: a sample input (one image is used) to find the execution order. See the module docstring for the rule.
    """
    get_module(model, layer)  # LayerError with candidates when unknown
    order = _execution_order(model, x)
    units: list[str] = []

    def expand(prefix: str, mod: torch.nn.Module) -> None:
        for name, child in mod.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if not _has_params(child):
                continue
            on_path = layer == path or layer.startswith(path + ".")
            container = isinstance(child, (torch.nn.Sequential, torch.nn.ModuleList)) and \
                sum(_has_params(c) for c in child.children()) >= 2
            if (on_path and layer != path) or (container and prefix == ""):
                expand(path, child)
            else:
                units.append(path)

    expand("", model)
    called = [u for u in units if u in order]
    return sorted(called, key=lambda u: order[u])


def reinit_module(module: torch.nn.Module, seed: int) -> None:
    """Re-initialise every parameter and BatchNorm buffer of `module` in place (see the module docstring)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        done: set[int] = set()
        for m in module.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
                done.update(id(p) for p in m.parameters(recurse=False))
            if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats:
                m.reset_running_stats()  # mean 0, var 1: finite
        with torch.no_grad():
            for m in module.modules():
                for p in m.parameters(recurse=False):
                    if id(p) in done:
                        continue
                    if p.ndim >= 2:
                        torch.nn.init.kaiming_uniform_(p, a=5 ** 0.5)
                    else:
                        mu, sd = float(p.mean()), float(p.std()) if p.numel() > 1 else 0.0
                        p.copy_(torch.randn_like(p) * (sd if np.isfinite(sd) else 0.0) + mu)
                    done.add(id(p))


# ----------------------------------------------------------------------------------------------------------------
# similarity

def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def map_similarity(a: torch.Tensor, b: torch.Tensor, size: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (Spearman ρ, SSIM) between raw maps a, b (N×h×w) upsampled to `size`; NaN where undefined
    (either map constant or non-finite)."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity
    ua = upsample(a.float().cpu(), size).numpy().astype(np.float64)
    ub = upsample(b.float().cpu(), size).numpy().astype(np.float64)
    n = len(ua)
    rho, ssim = np.full(n, NAN), np.full(n, NAN)
    for i in range(n):
        x, y = ua[i], ub[i]
        if not (np.isfinite(x).all() and np.isfinite(y).all()) or np.ptp(x) <= 0 or np.ptp(y) <= 0:
            continue
        rho[i] = spearmanr(x.ravel(), y.ravel())[0]
        ssim[i] = structural_similarity(_minmax(x), _minmax(y), data_range=1.0)
    return rho, ssim


def _mean_ci(v: np.ndarray, n_boot: int, seed: int) -> dict:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"value": None, "lo": None, "hi": None, "n": 0}
    if v.size == 1 or np.ptp(v) == 0:
        lo = hi = float(v.mean())
    else:
        lo, hi = bootstrap_ci(v, lambda a: a.mean(axis=1), n_boot=n_boot, seed=seed, vectorized=True)
    return {"value": round(float(v.mean()), 4), "lo": round(lo, 4), "hi": round(hi, 4), "n": int(v.size)}


def _fracs(maps: torch.Tensor, masks: dict[str, torch.Tensor], size) -> dict[str, float | None]:
    up = upsample(maps.float().cpu(), size)
    tot = up.flatten(1).sum(1)
    out = {}
    for r, m in masks.items():
        mm = torch.as_tensor(m).float().cpu()
        if mm.shape != up.shape:
            raise ValueError(f"masks[{r!r}]: expected shape {tuple(up.shape)} (N×S×S on the input grid), "
                             f"got {tuple(mm.shape)}")
        f = (up * mm).flatten(1).sum(1) / tot.clamp_min(1e-12)
        ok = (tot > 0) & (mm.flatten(1).sum(1) > 0) & torch.isfinite(f)
        out[r] = round(float(f[ok].mean()), 4) if bool(ok.any()) else None
    return out


# ----------------------------------------------------------------------------------------------------------------
# the check

def _explain(explainer: Explainer, model, images, layer, target, batch_size) -> torch.Tensor:
    return torch.cat([explainer(model, images[i:i + batch_size], layer, target[i:i + batch_size]).detach().cpu()
                      for i in range(0, len(images), batch_size)])


def sanity_check(model: torch.nn.Module, layer: str, images: torch.Tensor,
                 target: str | int | Sequence[int] | torch.Tensor = "pred", seed: int = 0,
                 modes: Sequence[str] = ("cascade", "independent"), masks: dict[str, torch.Tensor] | None = None,
                 explainer: Explainer | None = None, threshold: float = DEFAULT_THRESHOLD, n_boot: int = 1000,
                 batch_size: int = 32, labels: torch.Tensor | None = None) -> dict:
    """Model-parameter randomisation test of the maps at `layer` on `images`.

    model: a classifier (untouched: the test runs on a deep copy on the images' device).
    layer: dotted path of the target layer (e.g. "layer4").
    images: N×C×S×S float tensor, already normalised as the model expects (N ≥ 1; 16–64 is plenty).
    target: the class explained, resolved ONCE on the original model ("pred", "true" with `labels`, a class
        index, or N indices) and then kept fixed for every randomised model.
    seed: seeds each step's re-initialisation (step i uses seed·1000 + i) and the bootstrap.
    modes: any of "cascade", "independent". masks: optional {region: N×S×S bool tensor on the input grid}.
    explainer: (model, x, layer, target) → N×h×w maps; default Grad-CAM, `edge_explainer` is a model-blind baseline.
    threshold: the mean ρ under full randomisation above which the maps fail.

    Returns a JSON-able dict:
      {"method": str, "layer", "explainer", "n_images", "seed", "threshold", "units": [unit paths, input → head],
       "original": {"n_zero_maps", "region_fracs"?},
       "steps": [{"mode", "step", "unit", "randomised": [paths], "position": "after"|"target"|"before",
                  "spearman": {value, lo, hi, n}, "ssim": {value, lo, hi, n}, "n_undefined", "n_nonfinite",
                  "region_fracs"?: {region: {"original", "randomised", "change"}}}, ...],
       "full_randomisation": {"spearman", "ssim"} (the last cascade step; None without "cascade"),
       "head_randomisation": the first cascade step, "gate_value": mean ρ under full randomisation (lower is
       better), "verdict": "pass" | "fail" | "undefined", "verdict_text": str, "timing_s": float}

    Raises ValueError for bad arguments, LayerError for an unknown layer. Example::

        rep = sanity_check(model, "layer4", x[:32])
        print(rep["verdict_text"])

    Adebayo et al. 2018, "Sanity checks for saliency maps"; Hedström et al. 2023, "Sanity checks revisited".
    """
    t0 = time.perf_counter()
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images: expected a non-empty N×C×S×S tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    bad = [m for m in modes if m not in ("cascade", "independent")]
    if bad or not modes:
        raise ValueError(f"modes: expected a non-empty subset of ('cascade', 'independent'), got {tuple(modes)}")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold: expected a correlation in [0, 1], got {threshold!r}")
    explainer = explainer or gradcam_explainer
    ex_name = getattr(explainer, "__name__", type(explainer).__name__)
    size = tuple(images.shape[-2:])
    device = images.device
    base = copy.deepcopy(model).to(device)
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    get_module(base, layer)
    units = randomisation_units(base, layer, images)
    if not units:
        raise LayerError(f"layer {layer!r}: the model has no parameterised module to randomise")
    order = {u: i for i, u in enumerate(units)}
    in_target = {u for u in units if u == layer or layer.startswith(u + ".") or u.startswith(layer + ".")}
    t_lo = min((order[u] for u in in_target), default=None)
    t_hi = max((order[u] for u in in_target), default=None)

    with torch.no_grad():
        logits = torch.cat([base(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    from .cam import resolve_targets
    tgt = resolve_targets(logits, target, labels).to(device)
    orig = _explain(explainer, base, images, layer, tgt, batch_size)
    n_zero = int((~torch.isfinite(orig.flatten(1)).all(1) | (orig.flatten(1).amax(1) <= orig.flatten(1).amin(1)))
                 .sum())
    rep: dict = {
        "method": ("model-parameter randomisation (Adebayo et al. 2018): cascade top-down and independent "
                   "(Hedström et al. 2023); per-image Spearman ρ on maps upsampled to the input, SSIM "
                   "(data_range=1) on min-maxed upsampled maps; mean with a percentile-bootstrap 95% CI; "
                   "constant (all-zero) maps excluded and counted; class explained fixed to the original's"),
        "layer": layer, "explainer": ex_name, "n_images": int(len(images)), "seed": int(seed),
        "threshold": float(threshold), "units": units, "target_units": sorted(in_target, key=order.get),
        "original": {"n_zero_maps": n_zero}, "steps": [],
    }
    if masks:
        rep["original"]["region_fracs"] = _fracs(orig, masks, size)

    def position(u: str) -> str:
        if t_lo is None:
            return "unknown"
        return "target" if u in in_target else ("after" if order[u] > t_hi else "before")

    def measure(m: torch.nn.Module, mode: str, step: int, unit: str, randomised: list[str]) -> dict:
        maps = _explain(explainer, m, images, layer, tgt, batch_size)
        nonfinite = int((~torch.isfinite(maps.flatten(1)).all(1)).sum())
        rho, ssim = map_similarity(orig, maps, size)
        st = {"mode": mode, "step": step, "unit": unit, "randomised": list(randomised), "position": position(unit),
              "spearman": _mean_ci(rho, n_boot, seed), "ssim": _mean_ci(ssim, n_boot, seed),
              "n_undefined": int(np.isnan(rho).sum()), "n_nonfinite": nonfinite}
        if masks:
            before, after = rep["original"]["region_fracs"], _fracs(maps, masks, size)
            st["region_fracs"] = {r: {"original": before[r], "randomised": after[r],
                                      "change": None if before[r] is None or after[r] is None
                                      else round(after[r] - before[r], 4)} for r in masks}
        return st

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # spearmanr on ties
        if "cascade" in modes:
            m = copy.deepcopy(base)
            done: list[str] = []
            for i, u in enumerate(reversed(units)):
                reinit_module(get_module(m, u), seed * 1000 + order[u])
                _check_finite(m, u)
                done.append(u)
                rep["steps"].append(measure(m, "cascade", i + 1, u, done))
            del m
        if "independent" in modes:
            for i, u in enumerate(reversed(units)):
                m = copy.deepcopy(base)
                reinit_module(get_module(m, u), seed * 1000 + order[u])
                _check_finite(m, u)
                rep["steps"].append(measure(m, "independent", i + 1, u, [u]))
                del m

    casc = [s for s in rep["steps"] if s["mode"] == "cascade"]
    full = casc[-1] if casc else None
    rep["full_randomisation"] = {"spearman": full["spearman"], "ssim": full["ssim"]} if full else None
    rep["head_randomisation"] = {"unit": casc[0]["unit"], "spearman": casc[0]["spearman"],
                                 "ssim": casc[0]["ssim"]} if casc else None
    rho_full = full["spearman"]["value"] if full else None
    est = full["spearman"] if full else None
    if rho_full is None and not casc:
        ind = [s["spearman"] for s in rep["steps"] if s["spearman"]["value"] is not None]
        est = min(ind, key=lambda e: e["value"]) if ind else None  # independent only: the most disruptive unit
        rho_full = est["value"] if est else None
    rep["gate_value"] = rho_full
    ci = ""
    if est is not None and est.get("lo") is not None and est.get("hi") is not None:
        ci = f" [95% CI {est['lo']:.2f}, {est['hi']:.2f}], n = {est.get('n')} images"
    elif est is not None:
        ci = f", n = {est.get('n')} images"
    if rho_full is None:
        rep["verdict"] = "undefined"
        rep["verdict_text"] = ("no correlation could be computed (all maps constant or all-zero): the maps carry no "
                               "information to test")
    elif rho_full > threshold:
        rep["verdict"] = "fail"
        rep["verdict_text"] = (f"the maps barely change when the model's learned weights are destroyed (mean "
                               f"Spearman ρ = {rho_full:.2f}{ci} > {threshold:.2f} under "
                               f"{'full randomisation' if casc else 'the most disruptive single re-initialisation'}"
                               "): they reflect the input more than the model, so region fractions computed from "
                               "them say little about what the model uses")
    else:
        rep["verdict"] = "pass"
        rep["verdict_text"] = (f"the maps depend on the learned weights (mean Spearman ρ = {rho_full:.2f}{ci} ≤ "
                               f"{threshold:.2f} under {'full randomisation' if casc else 'randomisation'})")
    rep["timing_s"] = round(time.perf_counter() - t0, 3)
    return rep


def load_sample(rows, spec, n: int = 32, seed: int = 0, region_fn=None, device: str | torch.device = "cpu",
                regions: Sequence[str] | None = None) -> tuple[torch.Tensor, list[str], dict[str, torch.Tensor] | None]:
    """A seeded random sample of n readable manifest rows as the model sees them, for `sanity_check`.

    rows: manifest DataFrame (image_id, image, ...); spec: the run's InputSpec; region_fn: optional
    (`pipeline.build_region_fn(cfg)[0]`) to also return masks; regions: which of them (default: all built for
    every sampled image). Returns (images N×C×S×S normalised on `device`, image_ids, {region: N×S×S bool} or None).
    """
    from .data import make_loader
    from .preprocess import normalize
    if n < 1:
        raise ValueError(f"n: expected a positive number of images, got {n!r}")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(rows), size=min(n, len(rows)), replace=False))
    sub = rows.iloc[pick].reset_index(drop=True)
    imgs, ids, masks = [], [], []
    for batch in make_loader(sub, spec, batch_size=min(32, len(sub)), workers=0, region_fn=region_fn):
        if batch.img is None:
            continue
        imgs.append(normalize(batch.img, spec))
        ids += [str(sub.iloc[i]["image_id"]) for i in batch.idx]
        masks += batch.masks or [{} for _ in batch.idx]
    if not imgs:
        raise ValueError("load_sample: none of the sampled images could be read")
    x = torch.cat(imgs).to(device)
    mk = None
    if region_fn is not None:
        names = list(regions) if regions is not None else sorted(set.intersection(*(set(m) for m in masks)))
        mk = {r: torch.stack([m[r] for m in masks]) for r in names if all(r in m for m in masks)} or None
    return x, ids, mk


def _check_finite(m: torch.nn.Module, unit: str) -> None:
    for name, t in list(m.named_parameters()) + list(m.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise RuntimeError(f"re-initialising {unit!r} left a non-finite value in {name!r}")
