"""Counterfactual check: remove an artifact region and see whether the prediction changes.

Grad-CAM mass on a ruler, a text marker or ink shows a *correlation* between the evidence and the artifact. This
module tests *cause*: for every (image, artifact region) pair where the region's mask is available and non-empty,
the region is removed from the model-grid image — filled from its surroundings — and the edited image is run
through the model again. Reported per image and region:

  cf_delta_<r> = P_edit(explained) − P_orig(explained)    float in [−1, 1]; NaN when not tested
  cf_flip_<r>  = 1.0 if argmax changed, 0.0 if not          NaN when not tested
  cf_pred_<r>  = argmax of the edited image's softmax       int, −1 when not tested
  cf_status_<r> = "ok" | "absent" (no mask / empty mask) | "too_large" (mask area > max_area, or nothing
                  around it to fill from)

Fill methods (`fill_region`):
  "median"     (default, fast): the mask is dilated by `dilate` px (disk footprint) so that the anti-aliased
               edges of markers and ink go too; each 8-connected component of the dilated mask is filled with the
               per-channel median of the ring of pixels within `ring` px outside the dilated mask (pixels of other
               components excluded). Optional light Gaussian blur (`seam_blur`, sigma in px) applied inside the
               dilated mask only, to soften the seam. Pixels outside the dilated mask are never changed.
               Report wording: "region removed by filling it with the median of a ring of surrounding pixels
               (dilated by 2 px)".
  "biharmonic" (slow, smooth): `skimage.restoration.inpaint_biharmonic(img, dilated_mask, channel_axis=-1,
               split_into_regions=True)` (Damelin & Hoang 2018), rounded back to uint8.

A mask covering more than `max_area` (default 0.5) of the image is not filled: removing half the image tests
nothing, so the pair is reported as NaN with status "too_large".

The fill runs on the CPU (numpy/scipy); the edited images are normalised with `audit.preprocess.normalize` and run
through the model in chunks of `batch_size` — one forward per chunk, on `device`, under `torch.no_grad()`, with
the model in eval mode (every submodule's mode restored afterwards). `edited_outputs` is that engine, shared by the
single-label check (`counterfactual_batch`: softmax, flips of the argmax) and the multi-label one
(audit/multilabel.py: sigmoid, flips of each finding's thresholded decision).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi

from .cam import eval_mode
from .preprocess import InputSpec, normalize
from .stats import Estimate, bootstrap_ci, proportion_ci
from .summary_types import jsonable

__all__ = ["FILL_METHODS", "fill_region", "edited_outputs", "EditedOutputs", "counterfactual_batch",
           "counterfactual_rates", "counterfactual_columns", "attribute_flips", "INSIDE", "method_description"]

FILL_METHODS = ("median", "biharmonic")
NAN = float("nan")
_EIGHT = np.ones((3, 3), dtype=bool)          # 8-connectivity for components


def method_description(method: str = "median", dilate: int = 2, ring: int = 3) -> str:
    """One sentence naming the fill, for reports (e.g. summary.json's counterfactual `method`)."""
    if method == "median":
        return (f"region removed by filling it with the median of a ring of surrounding pixels "
                f"(dilated by {dilate} px; ring {ring} px wide, per connected component, per channel)")
    if method == "biharmonic":
        return (f"region removed by biharmonic inpainting (skimage.restoration.inpaint_biharmonic) "
                f"of the region dilated by {dilate} px")
    raise ValueError(f"method: expected one of {FILL_METHODS}, got {method!r}")


def counterfactual_columns(regions: Sequence[str]) -> list[str]:
    """Column names `counterfactual_batch` returns for `regions`, in order."""
    return [f"cf_{k}_{r}" for r in regions for k in ("delta", "flip", "pred", "status")]


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return (x * x + y * y) <= r * r


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    return ndi.binary_dilation(mask, structure=_disk(r)) if r > 0 else mask.copy()


def _check_img_mask(img: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(img)
    mask = np.asarray(mask)
    if img.ndim != 3 or img.dtype != np.uint8:
        raise ValueError(f"img: expected a uint8 H×W×C array, got dtype {img.dtype} and shape {img.shape}")
    if mask.shape != img.shape[:2]:
        raise ValueError(f"mask: expected shape {img.shape[:2]} (the image's H×W), got {mask.shape}; "
                         "put the mask on the model grid with audit.preprocess.mask_to_grid")
    if mask.dtype != bool:
        if mask.size and not np.isin(mask, (0, 1)).all():
            raise ValueError(f"mask: expected booleans (or 0/1), got dtype {mask.dtype} with other values")
        mask = mask.astype(bool)
    return img, mask


def fill_region(img: np.ndarray, mask: np.ndarray, method: str = "median", dilate: int = 2, ring: int = 3,
                max_area: float = 0.5, seam_blur: float = 0.0) -> np.ndarray | None:
    """Remove a region from an image by filling it from its surroundings.

    img: uint8 H×W×C (C = 3 on the model grid; any C works), values 0–255. Not modified.
    mask: bool H×W (or 0/1), True = the region to remove.
    method: "median" — each 8-connected component of the dilated mask is filled with the per-channel median of
        the pixels in a ring `ring` px wide just outside the dilated mask (pixels of any component excluded;
        when a component has no ring, the median of all pixels outside the dilated mask is used);
        "biharmonic" — skimage.restoration.inpaint_biharmonic(img, dilated_mask, channel_axis=-1), slow.
    dilate: the mask is dilated by this many px (disk footprint) first, so anti-aliased edges go too (≥ 0).
    ring: width in px of the surrounding ring the median is taken over ("median" only, ≥ 1).
    max_area: largest mask area (fraction of H×W, of the undilated mask) that is filled; above it → None.
    seam_blur: Gaussian sigma in px (0 = none, "median" only); the blurred image replaces the fill inside the
        dilated mask only, softening the seam.

    Returns a new uint8 H×W×C array equal to `img` outside the dilated mask, or None when the mask covers more
    than `max_area` of the image or the dilated mask leaves no pixel to fill from. An empty mask returns a copy.

    Raises ValueError on an unknown method or mismatched shapes.

    Example: a white 6×6 marker on a uniform grey (128) image → the marker and a 2 px border become 128.
    """
    if method not in FILL_METHODS:
        raise ValueError(f"method: expected one of {FILL_METHODS}, got {method!r}")
    if int(dilate) != dilate or dilate < 0:
        raise ValueError(f"dilate: expected an integer ≥ 0 (px), got {dilate!r}")
    if int(ring) != ring or ring < 1:
        raise ValueError(f"ring: expected an integer ≥ 1 (px), got {ring!r}")
    if not 0 < max_area <= 1:
        raise ValueError(f"max_area: expected a fraction in (0, 1], got {max_area!r}")
    img, mask = _check_img_mask(img, mask)
    if not mask.any():
        return img.copy()
    if mask.mean() > max_area:
        return None
    dil = _dilate(mask, int(dilate))
    if dil.all():
        return None
    if method == "biharmonic":
        from skimage.restoration import inpaint_biharmonic
        f = inpaint_biharmonic(img, dil, channel_axis=-1, split_into_regions=True)   # float in [0, 1]
        out = img.copy()
        out[dil] = np.clip(np.rint(f[dil] * 255.0), 0, 255).astype(np.uint8)
        return out
    return _median_fill(img, dil, int(ring), float(seam_blur))


def _median_fill(img: np.ndarray, dil: np.ndarray, ring: int, seam_blur: float) -> np.ndarray:
    out = img.copy()
    lab, n = ndi.label(dil, structure=_EIGHT)
    h, w = dil.shape
    fallback = None
    for k, sl in enumerate(ndi.find_objects(lab), start=1):
        # work in the component's bounding box grown by `ring`: the ring cannot reach further
        r0, r1 = max(sl[0].start - ring, 0), min(sl[0].stop + ring, h)
        c0, c1 = max(sl[1].start - ring, 0), min(sl[1].stop + ring, w)
        comp = lab[r0:r1, c0:c1] == k
        band = _dilate(comp, ring) & ~dil[r0:r1, c0:c1]
        if band.any():
            fill = np.median(img[r0:r1, c0:c1][band], axis=0)
        else:
            if fallback is None:
                fallback = np.median(img[~dil], axis=0)
            fill = fallback
        out[r0:r1, c0:c1][comp] = np.clip(np.rint(fill), 0, 255).astype(np.uint8)
    if seam_blur > 0:
        blurred = ndi.gaussian_filter(out.astype(np.float32), sigma=(seam_blur, seam_blur, 0), mode="nearest")
        out[dil] = np.clip(np.rint(blurred[dil]), 0, 255).astype(np.uint8)
    return out


def _mask_np(m) -> np.ndarray | None:
    if m is None:
        return None
    if isinstance(m, torch.Tensor):
        m = m.detach().cpu().numpy()
    return np.asarray(m)


@dataclass
class EditedOutputs:
    """The model's outputs on the edited images of one batch (`edited_outputs`).

    pairs: the P (image index, region) pairs edited and run, region-major (every image of the first region, then
        the next), i.e. the rows of `outputs`.
    outputs: P×C tensor on the CPU, the model's raw outputs (logits, its own output dtype) on the edited images;
        0×0 float32 when nothing was edited.
    status: {region: N object array}: "ok" (edited and run), "absent" (no mask, None or an all-False mask) or
        "too_large" (mask area > max_area, or no pixel left to fill from).
    n_forward: the forwards run (one per chunk of `batch_size` edited images)."""

    pairs: list[tuple[int, str]]
    outputs: torch.Tensor
    status: dict[str, np.ndarray]
    n_forward: int = 0


def _check_edit_inputs(grid_imgs, masks, regions, batch_size, method) -> tuple[np.ndarray, list, list[str]]:
    """(imgs uint8 N×S×S×3, one mask dict (or None) per image, regions) after checking them; ValueError naming the
    argument otherwise."""
    if isinstance(grid_imgs, torch.Tensor):
        imgs = grid_imgs.detach().cpu().numpy()
    else:
        imgs = np.asarray(grid_imgs)
    if imgs.ndim != 4 or imgs.shape[-1] != 3 or imgs.dtype != np.uint8:
        raise ValueError(f"grid_imgs: expected a uint8 N×S×S×3 tensor, got dtype {imgs.dtype} and shape "
                         f"{tuple(imgs.shape)}")
    n = imgs.shape[0]
    masks = list(masks) if masks is not None else [None] * n
    if len(masks) != n:
        raise ValueError(f"masks: expected one dict per image ({n}), got {len(masks)}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer ≥ 1, got {batch_size!r}")
    if method not in FILL_METHODS:
        raise ValueError(f"method: expected one of {FILL_METHODS}, got {method!r}")
    regions = list(regions)
    if len(set(regions)) != len(regions):
        raise ValueError(f"regions: duplicate names in {regions}")
    return imgs, masks, regions


def _edited_outputs(model: torch.nn.Module, imgs: np.ndarray, masks: list, regions: list[str], spec: InputSpec,
                    device, batch_size: int, method: str, dilate: int, ring: int, max_area: float,
                    seam_blur: float) -> EditedOutputs:
    n = imgs.shape[0]
    status: dict[str, np.ndarray] = {}
    todo: list[tuple[int, str, np.ndarray]] = []
    for r in regions:
        st = np.empty(n, dtype=object)
        st[:] = "absent"
        status[r] = st
        for i in range(n):
            m = _mask_np((masks[i] or {}).get(r))
            if m is None:
                continue
            if m.shape != imgs.shape[1:3]:
                raise ValueError(f"masks[{i}][{r!r}]: expected shape {imgs.shape[1:3]} (the model grid), "
                                 f"got {m.shape}")
            if m.any():
                todo.append((i, r, m))
    res = EditedOutputs(pairs=[], outputs=torch.zeros(0, 0), status=status)
    if not todo:
        return res

    def edited() -> Iterator[tuple[int, str, np.ndarray]]:  # lazily: one chunk of edited images in memory
        for i, r, m in todo:
            e = fill_region(imgs[i], m, method, dilate, ring, max_area, seam_blur)
            if e is None:
                status[r][i] = "too_large"
            else:
                yield i, r, e

    p0 = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = p0.dtype if p0 is not None else torch.float32
    outs = []
    with eval_mode(model), torch.no_grad():
        for chunk in _chunks(edited(), int(batch_size)):
            x = torch.from_numpy(np.stack([e for _, _, e in chunk]))
            x = normalize(x.to(device, non_blocking=True), spec).to(dtype)
            outs.append(model(x).detach().cpu())
            res.n_forward += 1
            for i, r, _ in chunk:
                res.pairs.append((i, r))
                status[r][i] = "ok"
    if outs:
        res.outputs = torch.cat(outs)
    return res


def edited_outputs(model: torch.nn.Module, grid_imgs: torch.Tensor, masks: Sequence[dict | None],
                   regions: Sequence[str], spec: InputSpec, device: torch.device | str, batch_size: int = 64,
                   method: str = "median", dilate: int = 2, ring: int = 3, max_area: float = 0.5,
                   seam_blur: float = 0.0) -> EditedOutputs:
    """Fill each present artifact region of each image (`fill_region`) and run the model on the edited images:
    the one edit engine of the single-label (`counterfactual_batch`) and the multi-label counterfactual check.

    model: any classifier returning N×C outputs; run in eval mode under `torch.no_grad()` (every submodule's mode
        restored afterwards, also when it raises), inputs cast to its floating dtype.
    grid_imgs: uint8 N×S×S×3 tensor (or array) on the model grid, CPU. Not modified.
    masks: one dict per image {region: bool S×S tensor/array}; a missing key, None or an all-False mask means the
        region is absent for that image (None for the whole sequence = no masks).
    regions: the artifact regions to test (unique names).
    spec: the model's InputSpec (normalisation via `audit.preprocess.normalize`). device: where the forwards run.
    batch_size: edited images per forward (≥ 1). method, dilate, ring, max_area, seam_blur: as in `fill_region`.

    Returns an `EditedOutputs`: the (image, region) pairs run, their raw outputs (P×C, CPU) and each pair's status.
    The edited images are made one chunk at a time. Cost: one forward per chunk, no gradients.
    Raises ValueError naming the argument for bad images, masks (shape ≠ the model grid), batch_size, method or
    duplicate regions."""
    imgs, masks, regions = _check_edit_inputs(grid_imgs, masks, regions, batch_size, method)
    return _edited_outputs(model, imgs, masks, regions, spec, device, int(batch_size), method, dilate, ring,
                           max_area, seam_blur)


def counterfactual_batch(model: torch.nn.Module, grid_imgs: torch.Tensor, masks: Sequence[dict | None],
                         regions: Sequence[str], spec: InputSpec, explained, probs: np.ndarray,
                         device: torch.device | str, method: str = "median", batch_size: int = 64,
                         dilate: int = 2, ring: int = 3, max_area: float = 0.5,
                         seam_blur: float = 0.0) -> dict[str, np.ndarray]:
    """Re-run the model on each image with each present artifact region removed (softmax classifiers; the edits
    and forwards are `edited_outputs`').

    model: the classifier (logits N×C); its mode and every submodule's mode are restored afterwards.
    grid_imgs: uint8 N×S×S×3 tensor (or array) on the model grid, CPU. Not modified.
    masks: one dict per image {region: bool S×S tensor/array}; a missing key, None or an all-False mask means the
        region is absent for that image (None for the whole dict = no masks).
    regions: the artifact regions to test.
    spec: the model's InputSpec (normalisation via `audit.preprocess.normalize`).
    explained: N class indices (tensor or array), the class whose probability is compared.
    probs: N×C original softmax probabilities (float, rows sum to 1); the original prediction is their argmax.
    device: where the forwards run. method, dilate, ring, max_area, seam_blur: as in `fill_region`.
    batch_size: edited images per forward (≥ 1).

    Returns {column: array of length N} for each region r:
      cf_delta_<r>  float64, P_edit(explained) − P_orig(explained) in [−1, 1]; NaN where not tested;
      cf_flip_<r>   float64, 1.0 if the edited argmax ≠ original argmax, 0.0 if not; NaN where not tested;
      cf_pred_<r>   int64, the edited argmax; −1 where not tested;
      cf_status_<r> object (str), "ok", "absent" (no or empty mask) or "too_large" (area > max_area, or no
                    pixel left to fill from).
    Cost: one forward per chunk of `batch_size` edited images (Σ over images of present regions in all),
    no gradients.
    """
    imgs, masks, regions = _check_edit_inputs(grid_imgs, masks, regions, batch_size, method)
    n = imgs.shape[0]
    expl = explained.detach().cpu().numpy() if isinstance(explained, torch.Tensor) else np.asarray(explained)
    expl = expl.astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if expl.shape != (n,):
        raise ValueError(f"explained: expected {n} class indices, got shape {expl.shape}")
    if probs.ndim != 2 or probs.shape[0] != n:
        raise ValueError(f"probs: expected an N×C array with N = {n}, got shape {probs.shape}")
    if n and (expl.min() < 0 or expl.max() >= probs.shape[1]):
        raise ValueError(f"explained: class indices must lie in [0, {probs.shape[1] - 1}], got "
                         f"{expl.min()}..{expl.max()}")
    ed = _edited_outputs(model, imgs, masks, regions, spec, device, int(batch_size), method, dilate, ring, max_area,
                         seam_blur)
    out: dict[str, np.ndarray] = {}
    for r in regions:
        out[f"cf_delta_{r}"] = np.full(n, NAN)
        out[f"cf_flip_{r}"] = np.full(n, NAN)
        out[f"cf_pred_{r}"] = np.full(n, -1, dtype=np.int64)
        out[f"cf_status_{r}"] = ed.status[r]
    if not ed.pairs:
        return out
    p = torch.softmax(ed.outputs.float(), dim=1).numpy().astype(np.float64)
    if p.shape[1] != probs.shape[1]:
        raise ValueError(f"probs: has {probs.shape[1]} classes but the model returns {p.shape[1]}")
    orig_pred = probs.argmax(1)
    for j, (i, r) in enumerate(ed.pairs):
        pred = int(p[j].argmax())
        out[f"cf_delta_{r}"][i] = p[j, expl[i]] - probs[i, expl[i]]
        out[f"cf_flip_{r}"][i] = float(pred != orig_pred[i])
        out[f"cf_pred_{r}"][i] = pred
    return out


def _chunks(it: Iterator, size: int) -> Iterator[list]:
    buf = []
    for item in it:
        buf.append(item)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def _group_stats(flip: np.ndarray, delta: np.ndarray, min_n: int, n_boot: int, seed: int) -> dict:
    n = int(len(flip))
    if n < max(min_n, 1):
        small = Estimate(NAN, n=n, too_small=True, note=f"n = {n} < min_n = {min_n}")
        return {"n": n, "too_small": True, "flip_rate": jsonable(small), "mean_delta": jsonable(small)}
    k = int(flip.sum())
    fr = proportion_ci(k, n)
    lo, hi = bootstrap_ci(delta, lambda a: a.mean(axis=1), n_boot=n_boot, seed=seed, vectorized=True)
    md = Estimate(float(delta.mean()), lo, hi, n)
    return {"n": n, "too_small": False, "n_flips": k, "flip_rate": jsonable(fr), "mean_delta": jsonable(md)}


def counterfactual_rates(per_image: pd.DataFrame, regions: Sequence[str], class_col: str | None = "label",
                         min_n: int = 10, n_boot: int = 1000, seed: int = 0, method: str = "median",
                         dilate: int = 2, ring: int = 3) -> dict:
    """Dataset-level flip rates and mean probability changes of the counterfactual check.

    per_image: one row per image with the `cf_flip_<r>` and `cf_delta_<r>` columns of `counterfactual_batch`
        (NaN = region not tested; those rows are dropped and `n` counts tested images only) and `class_col`.
    regions: the regions to summarise. class_col: the per-class grouping column (e.g. the true label); None = no
        per-class breakdown. min_n: a group with fewer tested images is `too_small` (value None).
    n_boot, seed: the seeded percentile bootstrap of the mean delta (`audit.stats.bootstrap_ci`).
    method, dilate, ring: only to state the fill in the `method` string.

    Returns a JSON-serialisable dict (NaN → None):
      {"method": str,
       "regions": {r: {"n": tested images, "n_absent": int, "n_too_large": int, "too_small": bool,
                       "n_flips": int (when not too small),
                       "flip_rate": Estimate dict — k/n with the Wilson 95 % CI (`proportion_ci`),
                       "mean_delta": Estimate dict — mean of P_edit − P_orig with a bootstrap 95 % CI,
                       "by_class": {class: the same n / too_small / flip_rate / mean_delta}}},
       "cost": {"n_edited": total tested pairs, "n_forward": None, "seconds": None}}   (cost filled by the caller)
    A negative mean delta means removing the region lowers the explained class's probability: the model uses it.
    """
    if not isinstance(per_image, pd.DataFrame):
        raise TypeError(f"per_image: expected a pandas DataFrame, got {type(per_image).__name__}")
    if class_col is not None and class_col not in per_image.columns:
        raise ValueError(f"class_col: column {class_col!r} not in per_image; columns are "
                         f"{list(per_image.columns)} (pass class_col=None for no per-class breakdown)")
    res: dict = {"method": method_description(method, dilate, ring), "min_n": int(min_n), "regions": {},
                 "cost": {"n_edited": 0, "n_forward": None, "seconds": None}}
    for r in regions:
        fc, dc = f"cf_flip_{r}", f"cf_delta_{r}"
        missing = [c for c in (fc, dc) if c not in per_image.columns]
        if missing:
            raise ValueError(f"per_image: columns {missing} not found; run counterfactual_batch with region {r!r}")
        flip = per_image[fc].to_numpy(dtype=np.float64)
        delta = per_image[dc].to_numpy(dtype=np.float64)
        ok = np.isfinite(flip) & np.isfinite(delta)
        sc = f"cf_status_{r}"
        status = per_image[sc].astype(str).to_numpy() if sc in per_image.columns else None
        entry = _group_stats(flip[ok], delta[ok], min_n, n_boot, seed)
        entry["n_absent"] = int((status == "absent").sum()) if status is not None else int((~ok).sum())
        entry["n_too_large"] = int((status == "too_large").sum()) if status is not None else None
        if class_col is not None:
            labels = per_image[class_col].to_numpy()[ok]
            entry["by_class"] = {str(c): _group_stats(flip[ok][labels == c], delta[ok][labels == c], min_n,
                                                      n_boot, seed)
                                 for c in pd.unique(labels)}
        res["regions"][r] = entry
        res["cost"]["n_edited"] += int(ok.sum())
    return res


#: A region q counts as inside r in an image when at least this share of q's pixels are in r's mask (`within_q__r`):
#: filling r then removes most of q (the demo's marker is 64% inside the border band, and filling the band flips
#: its decisions).
INSIDE = 0.5


def _rate(flips: np.ndarray, min_n: int) -> dict:
    n = int(len(flips))
    if n < max(min_n, 1):
        return jsonable(Estimate(NAN, n=n, too_small=True, note=f"n = {n} < min_n = {min_n}"))
    return jsonable(proportion_ci(int(flips.sum()), n))


def _pct(e: dict) -> str:
    return f"{100 * e['value']:.0f}% [{100 * e['lo']:.0f}%, {100 * e['hi']:.0f}%] (n = {e['n']})"


def attribute_flips(per_image: pd.DataFrame, regions: Sequence[str], min_n: int = 10,
                    inside: float = INSIDE) -> list[dict]:
    """Which region the counterfactual flips belong to when one artifact region contains another.

    Filling a region r also fills every artifact q that lies inside it (a burned-in marker inside the border band, an
    ink stroke that the patch detector also claimed), so r's flip rate may be q's. For each tested region r and each
    other artifact q with `within_q__r` ≥ `inside` in some tested image, r's flips are split by whether q lies
    inside r (within ≥ inside) or is not there (q's mask empty or missing: the counterfactual check reads both as
    absent; images where q lies less than `inside` inside r are left out). Wilson 95% CIs. decision:
      "contained"     both groups have ≥ min_n images and r flips more decisions where q lies inside it than where
                      there is no q (the CIs do not overlap): r's flips belong to q;
      "undetermined"  one group has < min_n images: the two cannot be told apart on this set;
      "own effect"    r flips decisions where there is no q as well (the CIs overlap).
    Returns [{region, contains, n_inside, n_without, median_within (of q's pixels in r, over the inside images),
    flips_inside, flips_without (estimate dicts), same_pixels (q
    also covers r: within_r__q ≥ inside in those images), decision, text}], ordered as `regions`."""
    out = []
    for r in regions:
        fc = f"cf_flip_{r}"
        if fc not in per_image.columns:
            continue
        flip = per_image[fc].to_numpy(dtype=np.float64)
        tested = np.isfinite(flip)
        for q in regions:
            wc, ac = f"within_{q}__{r}", f"area_{q}"
            if q == r or wc not in per_image.columns or ac not in per_image.columns:
                continue
            within = per_image[wc].to_numpy(dtype=np.float64)
            area = per_image[ac].to_numpy(dtype=np.float64)
            ins = tested & (np.nan_to_num(within, nan=-1.0) >= inside)
            if not ins.any():
                continue
            without = tested & ~(area > 0)          # empty or missing mask
            fi, fw = _rate(flip[ins], min_n), _rate(flip[without], min_n)
            med = float(np.median(within[ins]))
            back = per_image[f"within_{r}__{q}"].to_numpy(dtype=np.float64)[ins] \
                if f"within_{r}__{q}" in per_image.columns else np.array([])
            same = bool(np.isfinite(back).any() and np.median(back[np.isfinite(back)]) >= inside)
            if fi.get("too_small") or fw.get("too_small"):
                decision = "undetermined"
                text = (f"{q} lies inside {r} in {int(ins.sum())} of the {int(tested.sum())} images tested for {r} and "
                        f"is absent from {int(without.sum())}: too few (min_n = {min_n}) to tell whether {r}'s flips "
                        f"are {q}'s")
            elif fi["lo"] > fw["hi"]:
                decision = "contained"
                text = (f"removing {r} flips {_pct(fi)} of the decisions where {q} lies inside it (median "
                        f"{100 * med:.0f}% of its pixels) and {_pct(fw)} where there is no {q}: {r}'s flips belong "
                        f"mostly to {q}")
            else:
                decision = "own effect"
                text = (f"removing {r} flips {_pct(fi)} of the decisions where {q} lies inside it and {_pct(fw)} "
                        f"where there is no {q}: {r} has an effect of its own")
            if same:
                text += f" ({q} and {r} claim the same pixels in those images)"
            out.append({"region": r, "contains": q, "n_inside": int(ins.sum()), "n_without": int(without.sum()),
                        "median_within": med,
                        "flips_inside": fi, "flips_without": fw, "same_pixels": same, "decision": decision,
                        "text": text})
    return out
