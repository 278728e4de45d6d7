"""Dataset-level summary of an audit (`summary.json`): a pure function of the per-image table and the config.

Every rate carries n and a Wilson 95% CI; every region statistic a seeded bootstrap CI (audit.stats); a group
below `min_n` is reported as too small, not as a number.
"""
from __future__ import annotations

import math
import re
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .errors import UndefinedMetricWarning
from .summary_types import (SCHEMA_VERSION, AuditSummary, ByGroup, Calibration, CamInfo, ClassRecall, DataInfo,
                            GroupAccuracy, HiddenShortcut, HighConfError, HighConfErrors, OffTarget, OperatingPoints,
                            RegionSummary, RunInfo, jsonable)
from .stats import (Estimate, bootstrap_ci, ece_if_calibrated, expected_calibration_error, group_keys, grouped_region_stats,
                    proportion_ci, region_stats)
from .thresholds import class_score, isic_metrics, operating_points, prob_from_logodds

if TYPE_CHECKING:
    from .config import AuditConfig
    from .run import RunConfig


#: Reasons (their beginnings) that mean an artifact is simply not on the image, not that a mask was lost.
ABSENT_REASONS = ("not detected", "no region", "no mask file for this image", "no pixel with value", "mask is empty")


def most_confident_first(df: pd.DataFrame) -> pd.DataFrame:
    """Rows by top-1 probability, highest first; ties (many saturate at 1.0 in float32) by the logit margin
    (`margin`, when present), then by image_id, so the order is deterministic."""
    keys = ["confidence"] + (["margin"] if "margin" in df else [])
    return df.assign(_id=df["image_id"].astype(str)).sort_values(
        keys + ["_id"], ascending=[False] * len(keys) + [True], kind="mergesort", na_position="last").drop(columns="_id")


def missing_reasons(per_image: pd.DataFrame, region: str, missing: np.ndarray, top: int = 3) -> dict[str, int]:
    """{reason: images} for the images whose fraction for `region` is undefined (`missing`: bool per row), most
    frequent first, at most `top` reasons (the rest as "other"). A reason is the region's note in
    `region_notes` without the image's id and paths ("mask file not found", "not detected"), else "all-zero
    map" (the region is there but the map holds no evidence), else "no region"."""
    n = len(per_image)
    notes = per_image["region_notes"].to_numpy(dtype=object) if "region_notes" in per_image else np.full(n, "")
    ids = per_image["image_id"].astype(str).to_numpy() if "image_id" in per_image else np.full(n, "")
    zero = per_image["cam_sum"].to_numpy(dtype=float) <= 0 if "cam_sum" in per_image else np.zeros(n, bool)
    counts: dict[str, int] = {}
    for note, iid, z in zip(notes[missing], ids[missing], zero[missing]):
        why = ""
        for part in (note.split("; ") if isinstance(note, str) else []):
            if part.startswith(f"{region}: ") or part.startswith("_regions: "):
                why = general_reason(part.split(": ", 1)[1], iid)
                break
        if not why or why in ("file", "geometry"):
            why = "all-zero map" if z else "no region"
        counts[why] = counts.get(why, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    out = dict(ranked[:top])
    if len(ranked) > top:
        out["other"] = sum(v for _, v in ranked[top:])
    return out


def general_reason(note: str, image_id: str) -> str:
    """A per-image note without its image-specific head: leading segments that are the image id, a path, a
    "region '<name>'" prefix or the provider kind ("heuristic") are dropped ("x/m.png: mask file not found"
    → "mask file not found"); "" when nothing is left."""
    segs = note.split(": ")
    i = 0
    while i < len(segs) and (segs[i] == image_id or "/" in segs[i] or "\\" in segs[i] or segs[i] == "heuristic"
                             or segs[i].startswith("region '") or re.search(r"\.[A-Za-z]{2,5}$", segs[i])):
        i += 1
    return ": ".join(segs[i:])[:120]


def add_flags(per_image: pd.DataFrame, kinds: dict[str, str], cfg: AuditConfig) -> pd.DataFrame:
    """flag_high_conf_error: wrong with confidence ≥ cfg.high_conf. flag_off_target: the target fraction is below
    cfg.off_target_frac, or an artifact region's lift exceeds cfg.artifact_lift (NaN scores never flag)."""
    df = per_image
    df["flag_high_conf_error"] = (~df["correct"].astype(bool)) & (df["confidence"] >= cfg.high_conf)
    off = pd.Series(False, index=df.index)
    reasons = [[] for _ in range(len(df))]
    for r, kind in kinds.items():
        if kind == "target" and f"frac_{r}" in df:
            hit = (df[f"frac_{r}"] < cfg.off_target_frac).fillna(False).to_numpy()
        elif kind == "artifact" and f"lift_{r}" in df:
            hit = (df[f"lift_{r}"] > cfg.artifact_lift).fillna(False).to_numpy()
        else:
            continue
        off |= hit
        for i in np.flatnonzero(hit):
            reasons[i].append(r)
    df["flag_off_target"] = off.to_numpy()
    df["off_target_regions"] = [",".join(x) for x in reasons]
    return df


def off_target_defined(df: pd.DataFrame, kinds: dict[str, str]) -> np.ndarray:
    """bool per image: at least one score the off-target flag reads (a target's frac_, an artifact's lift_) is
    defined. An image without one (an all-zero map, no region present) is neither on nor off target."""
    cols = [f"frac_{r}" if k == "target" else f"lift_{r}" for r, k in kinds.items()]
    cols = [c for c in cols if c in df]
    if not cols:
        return np.zeros(len(df), bool)
    return df[cols].notna().any(axis=1).to_numpy()


def rate(k: int, n: int) -> Estimate:
    """k/n with its Wilson 95% CI (NaN, without a warning, when n = 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return proportion_ci(int(k), int(n))


def _outputs_suffix(run: RunConfig) -> str:
    """" (one sigmoid logit)" / " (sigmoid output 6 of 14)" for a binary audit of a sigmoid output, else ""."""
    if not run.single_logit:
        return ""
    return " (one sigmoid logit)" if run.n_outputs == 1 else f" (sigmoid output {run.binary_logit} of {run.n_outputs})"


def confidence_ranks(per_image: pd.DataFrame) -> np.ndarray:
    """The top-1 confidence as its normalised rank in (0, 1) among the audited images (average ranks for ties),
    ranked by the top-1 log-odds (`logodds_<pred>`) where per_image.csv has them: a confident model has many
    images at exactly 1.0 in float32, which the log-odds still order. Spearman ρ uses ranks only, so ρ with these
    equals ρ with the confidence wherever the confidence is not tied. NaN stays NaN."""
    from scipy.stats import rankdata
    score = per_image["confidence"].to_numpy(dtype=float).copy()
    pred = per_image["pred"].astype(str).to_numpy()
    for c in pd.unique(pred):
        col = f"logodds_{c}"
        if col in per_image:
            m = pred == c
            score[m] = per_image.loc[m, col].to_numpy(dtype=float)
    out = np.full(len(score), np.nan)
    ok = np.isfinite(score)
    out[ok] = (rankdata(score[ok]) - 0.5) / max(int(ok.sum()), 1)
    return out


def build_summary(per_image: pd.DataFrame, kinds: dict[str, str], run: RunConfig, cfg: AuditConfig, *,
                  split: str, manifest, layer: str, cam_hw: tuple, n_skipped: int,
                  timing: dict, positive: str | None = None, val: tuple | None = None) -> AuditSummary:
    """The typed summary of the per-image table (`audit.summary_types.AuditSummary`); the pipeline adds the
    sections computed elsewhere (notes, counterfactual, discover, sanity, gates, cache) as attributes."""
    n = len(per_image)
    correct = per_image["correct"].astype(bool).to_numpy()
    conf = per_image["confidence"].to_numpy(dtype=float)
    conf_rank = confidence_ranks(per_image)  # ρ(frac, confidence) without the float32 ties at 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        calibration = Calibration(
            ece=expected_calibration_error(conf, correct, n_boot=cfg.n_boot, seed=cfg.seed, min_n=cfg.min_n),
            ece_if_calibrated=ece_if_calibrated(conf, seed=cfg.seed), n_bins=10,
            method="ECE of the top-1 confidence, 10 equal-width bins (Guo et al. 2017); percentile bootstrap CI; "
                   "biased upward at small n: ece_if_calibrated is what a perfectly calibrated model with these "
                   "confidences would read on average (200 draws)")
    per_class = {}
    for c in run.classes:
        m = (per_image["label"] == c).to_numpy()
        per_class[c] = ClassRecall(n=int(m.sum()), recall=rate(correct[m].sum(), m.sum()),
                                   too_small=bool(m.sum() < cfg.min_n))
    regions: dict[str, RegionSummary] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for r, kind in kinds.items():
            col = f"frac_{r}"
            if col not in per_image:
                continue
            frac = per_image[col].to_numpy(dtype=float)
            st = region_stats(frac, correct, conf_rank, n_boot=cfg.n_boot, seed=cfg.seed, min_n=cfg.min_n)
            lift = per_image[f"lift_{r}"].to_numpy(dtype=float)
            area = per_image[f"area_{r}"].to_numpy(dtype=float)
            fl = per_image[f"fraclayer_{r}"].to_numpy(dtype=float)
            hit = per_image[f"hit_{r}"].to_numpy(dtype=float)
            valid = np.isfinite(frac)
            regions[r] = RegionSummary(
                kind=kind, n_present=int(valid.sum()), n_missing=int((~valid).sum()),
                median_area=_nanmed(area), median_lift=_nanmed(lift), lift=median_estimate(lift, cfg),
                median_frac_layer_res=_nanmed(fl), pointing_game=rate(np.nansum(hit), np.isfinite(hit).sum()),
                stats=dict(st), missing_reasons=None if valid.all() else missing_reasons(per_image, r, ~valid))
    hce = per_image[per_image["flag_high_conf_error"]] if "flag_high_conf_error" in per_image else per_image.iloc[:0]
    top = most_confident_first(hce).head(10)
    cf_regions = [a for a, k in kinds.items() if k == "artifact" and f"cf_flip_{a}" in per_image]
    high_conf = HighConfErrors(threshold=cfg.high_conf, rate=rate(len(hce), n), top=[
        HighConfError(image_id=str(r["image_id"]), label=str(r["label"]), pred=str(r["pred"]),
                      confidence=round(float(r["confidence"]), 4), off_target=bool(r.get("flag_off_target", False)),
                      flips_without=[a for a in cf_regions if r.get(f"cf_flip_{a}") == 1.0] if cf_regions else None)
        for r in top.to_dict("records")])
    s = AuditSummary(
        schema_version=SCHEMA_VERSION,
        run=RunInfo(name=run.run_dir.name if run.run_dir else None, run_dir=str(run.run_dir) if run.run_dir else None,
                    model=f"{run.source}:{run.model_name}" + _outputs_suffix(run),
                    checkpoint=str(run.checkpoint) if run.checkpoint else None,
                    checkpoint_sha256=run.checkpoint_sha256, classes=list(run.classes), state_key=run.state_key,
                    weights_note=run.weights_note or None),
        data=DataInfo(manifest=str(manifest), split=split, n=n, n_skipped=n_skipped),
        cam=CamInfo(method="Grad-CAM (Selvaraju et al. 2017)", layer=layer, resolution=list(cam_hw),
                    target=cfg.target, upsampling="bilinear (align_corners=False) to the model input",
                    precision=cfg.amp or "fp32", memory_format="channels_last" if cfg.channels_last else "contiguous"),
        accuracy=rate(correct.sum(), n), per_class=per_class, regions=regions, high_conf_errors=high_conf,
        timing={k: round(v, 3) for k, v in timing.items()}, calibration=calibration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        if positive is not None:
            s.operating_points = OperatingPoints.from_json(_operating_points(per_image, run, positive, val, cfg))
        if len(run.classes) >= 3 and n >= cfg.min_n:
            y = per_image["label"].map({c: i for i, c in enumerate(run.classes)}).to_numpy()
            P = np.column_stack([class_score(per_image, c)[0] for c in run.classes])  # AUCs rank log-odds
            s.isic_metrics = jsonable(isic_metrics(y, P, run.classes, n_boot=cfg.n_boot, seed=cfg.seed,
                                                   min_n=cfg.min_n))
        s.by_artifact = _by_artifact(per_image, kinds, positive, cfg)
        if cfg.by:
            s.accuracy_by_group = {col: accuracy_by_group(per_image, col, cfg.min_n) for col in cfg.by}
        frac_cols = [f"frac_{r}" for r in kinds if f"frac_{r}" in per_image]
        by_cols = ["label", *cfg.by]
        if frac_cols:
            t = grouped_region_stats(per_image.assign(_conf_rank=conf_rank), frac_cols, by_cols, n_boot=cfg.n_boot,
                                     seed=cfg.seed, min_n=cfg.min_n, include_overall=False,
                                     confidence_col="_conf_rank")
            keep = t[t["stat"].isin(["median_all", "diff_median", "auroc_error", "spearman_conf_all"])
                     & (pd.to_numeric(t["n"], errors="coerce").fillna(1) > 0)]  # a group the region never occurs in
            s.by_group = ByGroup(columns=by_cols, rows=jsonable(keep.to_dict("records")))
    if "flag_off_target" in per_image:
        ok = off_target_defined(per_image, kinds)
        s.off_target = OffTarget(rate=rate(per_image["flag_off_target"].to_numpy()[ok].sum(), ok.sum()),
                                 n_undefined=int((~ok).sum()),
                                 rule=f"target frac < {cfg.off_target_frac} or artifact lift > {cfg.artifact_lift}",
                                 artifact_lift=cfg.artifact_lift, target_frac=cfg.off_target_frac)
    return s


def median_estimate(x: np.ndarray, cfg: AuditConfig) -> Estimate:
    """The median of the finite values of `x` with a seeded percentile-bootstrap 95% CI; too small (NaN) below
    cfg.min_n."""
    v = x[np.isfinite(x)]
    if v.size < cfg.min_n:
        return Estimate(math.nan, n=int(v.size), too_small=True, note=f"n = {v.size} < min_n = {cfg.min_n}")
    lo, hi = bootstrap_ci(v, lambda a: np.median(a, axis=1), n_boot=cfg.n_boot, seed=cfg.seed, vectorized=True)
    return Estimate(float(np.median(v)), lo, hi, int(v.size))


def _gate_threshold(s: AuditSummary, gate: str) -> float | None:
    """The threshold of the first gate whose name starts with `gate` ("max_artifact_lift" matches
    "max_artifact_lift[text]"), or None when the audit set no such gate."""
    g = next((g for g in s.gates if g.name.startswith(gate) and math.isfinite(g.threshold)), None)
    return None if g is None else float(g.threshold)


def target_floor(s: AuditSummary) -> float:
    """The median target fraction below which a target region is shown as a concern: the
    min_median_target_frac gate when one is set, else the off-target rule's target fraction (default 0.5)."""
    t = _gate_threshold(s, "min_median_target_frac")
    return t if t is not None else (s.off_target.target_frac if s.off_target else 0.5)


def lift_alarm(s: AuditSummary) -> float:
    """The lift above which a region's median lift is shown as an alarm: the max_artifact_lift gate when one
    is set (the figure then fails a gate), else the off-target rule's artifact lift (default 3)."""
    t = _gate_threshold(s, "max_artifact_lift")
    return t if t is not None else (s.off_target.artifact_lift if s.off_target else 3.0)


def hidden_shortcuts(s: AuditSummary) -> list[HiddenShortcut]:
    """Artifact regions the model depends on where its Grad-CAM maps do not show it.

    A region is listed when, with confidence (95% CIs), (1) removing it flips more decisions than allowed (flip
    rate CI lower bound > the max_counterfactual_flip_rate gate, else 0.10), (2) its median lift is below the
    alarm (CI upper bound < `lift_alarm`) and (3) it flips a larger share of the decisions than the share of the
    evidence the maps give it (flip rate lower bound > the median fraction's upper bound). (3) keeps out a large
    region such as a border band, which holds a quarter of the evidence and whose filling changes some decisions
    as any large edit would. The maps then read "not used" for a region whose removal changes the decisions: at
    a coarse layer a region smaller than one map cell cannot receive its share, and the gradient weighting can
    put the evidence elsewhere. s: the summary with `counterfactual`, `regions`, `cam` and (optionally)
    `gates`. Returns one `HiddenShortcut` per region (with `shown_artifacts`: other artifacts that flip decisions
    and that the maps do show, so filling this region may remove them too, e.g. a marker inside the border band),
    empty when none (or no counterfactual check). A region whose flips `audit.counterfactual.attribute_flips`
    gives to an artifact inside it ("contained") is not listed: the flips are that artifact's (the summary's
    `counterfactual.attribution` says so)."""
    if s.counterfactual is None:
        return []
    cf = s.counterfactual.regions
    attribution = {(a.region, a.contains): a for a in s.counterfactual.attribution}
    owned = {r for (r, _q), a in attribution.items() if a.decision == "contained"}
    alarm = lift_alarm(s)
    hw = s.cam.resolution
    cell = 1.0 / (hw[0] * hw[1]) if len(hw) == 2 and hw[0] * hw[1] > 0 else math.nan
    out = []
    for r, e in cf.items():
        reg = s.regions.get(r)
        if reg is None or e.flip_rate.too_small or reg.lift.too_small:
            continue
        if r in owned:  # its flips belong to an artifact inside it (attribute_flips), which the maps may well show
            continue
        fr, lift, frac = e.flip_rate, reg.lift, reg.stats.get("median_all", Estimate(math.nan))
        allowed = _gate_threshold(s, f"max_counterfactual_flip_rate[{r}]")
        allowed = 0.10 if allowed is None else allowed
        if not (fr.lo > allowed and lift.hi < alarm and fr.lo > frac.hi):  # NaN compares False
            continue
        area = reg.median_area
        text = (f"removing {r} changes {100 * fr.value:.0f}% [{100 * fr.lo:.0f}%, {100 * fr.hi:.0f}%] of "
                f"the predictions (n = {fr.n}), yet the maps give it {lift.value:.2f}× "
                f"[{lift.lo:.2f}, {lift.hi:.2f}] its area's share (alarm above {alarm:g}×) and "
                f"a median {100 * frac.value:.0f}% of the evidence: the model depends "
                f"on a region its Grad-CAM does not show (or reacts to how it was filled: the gallery's "
                f"'read as … without the {r}' cases show both), so a low lift here is no evidence that {r} is "
                "unused")
        if math.isfinite(area) and math.isfinite(cell) and area < cell:
            fl = s.cam.finer_layer
            res = "×".join(map(str, fl.resolution)) if fl else ""
            text += (f". One {hw[0]}×{hw[1]} map cell covers {100 * cell:.0f}% of the image and the region's median "
                     f"area is {100 * area:.1f}%: the map cannot single it out at this layer. An earlier layer has "
                     "finer cells (" + (f"--layer {fl.layer}, {res}" if fl else "--layer")
                     + "), though Grad-CAM may miss the region there too")
        shown = [q for q, eq in cf.items() if q != r and eq.flip_rate.lo > allowed and q in s.regions
                 and s.regions[q].lift.lo >= alarm]
        for q in shown:  # filling r also fills whatever lies inside it, e.g. a marker inside the border band
            fq, lq = cf[q].flip_rate, s.regions[q].lift
            a = attribution.get((r, q))
            text += (f". Filling {r} also removes any other artifact inside it: {q} changes {100 * fq.value:.0f}% "
                     f"on its own and the maps do show it ({lq.value:.2f}×)"
                     + (f"; {a.text}" if a else f", and {q} never lies inside {r} here"))
        out.append(HiddenShortcut(region=r, flip_rate=fr, lift=lift, median_frac=frac, flip_allowed=allowed,
                                  lift_alarm=alarm, median_area=area, cell_area=cell, shown_artifacts=shown,
                                  text=text))
    return out


def _operating_points(df: pd.DataFrame, run: RunConfig, positive: str, val, cfg: AuditConfig) -> dict:
    """Thresholds on P(positive) tuned on the validation split (else cross-fitted on the audited one).

    Tuned and applied on the log-odds of P(positive) from the logits (`class_score`), which rank the images a
    float32 softmax has saturated at 1.0; `threshold` is reported as a probability (σ of `threshold_logodds`).
    val: (labels (m,), log-odds (m, C)) of the validation split, or None."""
    score, kind = class_score(df, positive)
    y = (df["label"] == positive).to_numpy()
    top1 = (df["pred"] == positive).to_numpy()
    kw = {}
    if val is not None:
        vlab, vs = val
        ok = np.isfinite(vs).all(1) if vs.size else np.zeros(len(vlab), bool)
        if ok.any():
            kw = {"p_pos_val": vs[ok, run.classes.index(positive)], "y_pos_val": vlab[ok] == positive}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = operating_points(score, y, targets=tuple(cfg.sensitivities), y_pred_top1_pos=top1, seed=cfg.seed,
                               positive_name=positive, **kw)
    if kind == "logodds":
        for pt in res["points"]:
            pt["threshold_logodds"] = pt["threshold"]
            pt["threshold"] = prob_from_logodds(pt["threshold"])
            if pt["fold_thresholds"]:
                pt["fold_thresholds"] = [prob_from_logodds(t) for t in pt["fold_thresholds"]]
    res = jsonable(res)
    res["positive_class"] = positive
    res["score"] = ("log-odds of P(positive) from the logits (float64): ranks images whose float32 probability "
                    "is 1.0" if kind == "logodds" else "P(positive) (per_image.csv has no logodds column)")
    return res


def accuracy_by_group(df: pd.DataFrame, col: str, min_n: int) -> dict[str, GroupAccuracy]:
    """{group: {n, accuracy (Wilson 95% CI), too_small (n < min_n)}} of one --by column, largest group first;
    a missing value is its own group, "<missing>"."""
    t = df["correct"].astype(bool).groupby(group_keys(df[col])).agg(["sum", "size"])
    t = t.sort_values("size", ascending=False, kind="stable")  # groupby sorts by name: ties stay in name order
    return {str(g): GroupAccuracy(n=int(n), accuracy=rate(k, n), too_small=bool(n < min_n))
            for g, (k, n) in zip(t.index, t.to_numpy())}


def _by_artifact(df: pd.DataFrame, kinds: dict, positive: str | None, cfg: AuditConfig) -> dict:
    """Accuracy (and the positive class's top-1 sensitivity/specificity, and the mean P(positive) of the negatives)
    with vs without each detected artifact or 0/1 metadata flag (`--by`): the scan's analysis
    (`audit.association.model_by_artifact`, with its too-small rule at min_n), plus n_unknown: images whose
    presence is unknown (a detector failed on them), in neither stratum."""
    from .association import model_by_artifact
    flags = {r: f"present_{r}" for r, kind in kinds.items() if kind == "artifact" and f"present_{r}" in df}
    for col in cfg.by:  # metadata artifact flags (0/1 columns given with --by)
        vals = set(pd.to_numeric(df[col], errors="coerce").dropna().unique()) if col in df else set()
        if vals and vals <= {0, 1} and df[col].notna().all():
            flags[col] = col
    if not flags:
        return {}
    frame = df[[c for c in ("label", "pred", f"p_{positive}") if c in df]].copy()
    for r, col in flags.items():
        frame[f"present_{r}"] = (pd.to_numeric(df[col], errors="coerce").fillna(0).astype(bool).astype("boolean")
                                 if r == col else df[col].astype("boolean"))
    out = model_by_artifact(frame, list(flags), positive, cfg.min_n, 0.05, cfg.n_boot, cfg.seed)
    for r, e in out.items():
        e["n_unknown"] = int(len(df) - e["n_known"])
    return jsonable(out)


def _nanmed(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan
