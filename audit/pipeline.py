"""`run_audit(cfg)`: run dir + manifest → per_image.csv, cams.npz, summary.json, config.resolved.yaml, errors.csv.

The per-image table is the spine: every later step adds columns to it or reads it. Work is streamed per batch
(CAMs computed, scored against the batch's masks, rows appended, batch dropped). The h×w layer-resolution maps
and the embeddings for `cams.npz` are appended to files in the out folder (`audit/spill.py`), so what the
process holds grows only by the table's rows (and, under torchrun, rank 0 gathers the other ranks' arrays).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .cache import OutputCache
from .cam import default_layer, finer_layer, get_module, grad_cam, map_concentration, share_after
from .config import AuditConfig, write_resolved
from .gates import apply_gates
from .errors import ConfigError, ManifestError, UndefinedMetricWarning
from .manifest import default_split, load_manifest, select_split, split_note
from .preprocess import FORMAT_COLUMNS, InputSpec, normalize
from .common import (VALIDATION_SPLITS, PipelineResult, build_region_fn, manifest_source,
                     run_name)
from .run import RunConfig, load_run
from .predict import (dist_info, gather_to_rank0, log_odds, model_for_cam, predict_logits, release_freed_heap,
                      resolve_device, top2_margin)
from .counterfactual import attribute_flips, counterfactual_batch, counterfactual_rates, method_description
from .scores import region_columns, score_batch
from .spill import SpillArray, write_npz
from .summary_types import AuditSummary, CacheInfo, Counterfactual, FinerLayer, jsonable
from .stream import Progress, concat_frames, stream_batches, write_errors





def resolve_target(rule: str, classes: list[str]) -> str | int:
    if rule in ("pred", "true"):
        return rule
    if rule in classes:
        return classes.index(rule)
    raise ConfigError(f"target {rule!r}: expected 'pred', 'true' or one of the classes {classes}", param="target")



@dataclass
class RankPart:
    """What one torchrun rank hands to rank 0 at the end of its share of the pass."""

    records: list[dict]
    cams: np.ndarray
    emb: np.ndarray
    targets: np.ndarray
    errors: list[tuple]
    seconds: dict[str, float]
    from_cache: int
    computed: int


def grid_note(preset_input: dict, spec) -> str | None:
    """A note when the preset's `input:` grid (which scan and masks use) differs from the model's own
    preprocessing, which the audit always uses: the preset's values are not applied. None when they agree."""
    if not preset_input:
        return None
    ours = {"size": spec.size, "resize": spec.resize, "crop_pct": spec.crop_pct, "interpolation": spec.interpolation,
            "scale16": spec.scale16, "dicom_window": spec.dicom_window}
    diff = {k: v for k, v in preset_input.items() if k in ours and v != ours[k]}
    if not diff:
        return None
    return ("the preset's input (" + ", ".join(f"{k} {v}" for k, v in diff.items()) + ") is not used: the audit "
            "applies the model's own preprocessing (" + ", ".join(f"{k} {ours[k]}" for k in diff) + "); the "
            "preset's grid applies to scan and masks")


_SCALE16_TEXT = {"max": "divided by each image's own maximum", "full": "divided by 65535",
                 "minmax": "stretched from each image's own min..max"}


def bit_depth_note(depth: pd.Series, scale16: str | int) -> str | None:
    """A note when audited images are not all 8-bit: how many are 16-bit grayscale and how they were scaled
    (`InputSpec.scale16`, which must match the training loader), and that a dataset mixing bit depths can hold a
    site or scanner shortcut (`--by src_mode` compares them). None when every image is 8-bit."""
    n, k16, k32 = len(depth), int((depth == 16).sum()), int((depth == 32).sum())
    if k16 == 0 and k32 == 0:
        return None
    parts = []
    if k16:
        how = _SCALE16_TEXT.get(scale16, f"divided by 2^{scale16} − 1")  # type: ignore[call-overload]
        parts.append(f"{k16} of {n} images are 16-bit grayscale, {how} (input.scale16: {scale16}); the "
                     f"training loader must have scaled them the same way")
    if k32:
        parts.append(f"{k32} of {n} are 32-bit float, taken as [0, 1] or stretched from their own range")
    if k16 + k32 < n:
        parts.append("the set mixes bit depths, which can follow the site or scanner: compare with --by src_mode")
    return "; ".join(parts)


def early_layer_note(model: torch.nn.Module, layer: str, cam_hw, spec) -> str | None:
    """A warning when the default layer is an early one (maps at ≥ 1/16 of the input side) with most of the
    network after it: the model's later layers are not spatial maps the auditor recognises (e.g. LeViT's
    tokens), so the maps show the stem's response, not the decision's support. None otherwise."""
    if not cam_hw or max(cam_hw) * 16 < spec.size:
        return None
    share = share_after(model, layer, (1, spec.channels, spec.size, spec.size))
    if not share > 0.5:
        return None
    return (f"the default layer {layer} ({cam_hw[0]}×{cam_hw[1]} at {spec.size} px) is an early one: "
            f"{100 * share:.0f}% of the model's parameters run after it, on activations that are not spatial maps "
            "the auditor recognises; its maps say little about the decision: choose a later --layer")


def load_audit_manifest(cfg: AuditConfig, run: RunConfig) -> tuple[pd.DataFrame, pd.DataFrame, str, Path]:
    """(full manifest, audited rows, split name, manifest path)."""
    path, data_spec = manifest_source(cfg, run)
    full = load_manifest(path, data_spec, classes=run.classes)
    split = cfg.split or default_split(full, path)
    rows = select_split(full, split, path)
    if cfg.limit:
        rows = rows.iloc[: cfg.limit].reset_index(drop=True)
    for col in cfg.by:
        if col not in rows.columns and col not in FORMAT_COLUMNS.values() and not col.startswith("dicom_"):
            raise ManifestError(f"{path}: by column {col!r} not found; columns are {list(rows.columns)} and the "
                                f"image-format columns {list(FORMAT_COLUMNS.values())}", param="by")
    return full, rows, split, path



def header_spec(spec: InputSpec, cfg: AuditConfig) -> InputSpec:
    """`spec` reading the DICOM header fields of the preset (`input.dicom_fields`: the preset's, not the model's)
    and those the regions' `presence_from: dicom_<Keyword>` name (`audit.dicom.fields_for_regions`). Pixels, and
    so the cache key, are unchanged."""
    from .dicom import fields_for_regions
    pre = (cfg.preset_input or {}).get("dicom_fields")
    fields = fields_for_regions(tuple(pre) if pre is not None else spec.dicom_fields, cfg.regions)
    return spec if fields == spec.dicom_fields else dataclasses.replace(spec, dicom_fields=fields)


@dataclass
class AuditPlan:
    """What the pass needs, resolved and checked before any image is read (bad input fails here, before work).

    rows: the audited manifest rows (this rank's share under torchrun), with `_row`, their position in the audited
    split; full: the whole manifest (the validation split is read from it); kinds: region → "target" / "artifact";
    target_rule: "pred", "true" or a class index; rank, world: torchrun's (0, 1 in one process)."""

    cfg: AuditConfig
    model: torch.nn.Module
    run: RunConfig
    device: torch.device
    full: pd.DataFrame
    rows: pd.DataFrame
    split: str
    manifest_path: Path
    layer: str
    target_rule: str | int
    region_fn: object
    kinds: dict[str, str]
    positive: str | None
    rank: int
    world: int
    out: Path

    @property
    def spec(self) -> InputSpec:
        return self.run.input

    @property
    def artifacts(self) -> list[str]:
        return [r for r, k in self.kinds.items() if k == "artifact"]


@dataclass
class PassOutput:
    """The streaming pass's result, in manifest order (rank 0 holds every rank's under torchrun).

    per_image: one row per readable image (before the flags); cams: N×h×w maps at layer resolution and emb: N×D
    pooled features (a `SpillArray` on disk, or an array); targets: N explained class indices; errors: the
    unreadable images; seconds: model, counterfactual, score, decode and regions time; from_cache / computed:
    images whose model outputs were read from the cache / computed."""

    per_image: pd.DataFrame
    cams: SpillArray | np.ndarray
    emb: SpillArray | np.ndarray
    targets: np.ndarray
    errors: list
    seconds: dict[str, float]
    from_cache: int
    computed: int


def run_audit(cfg: AuditConfig, progress: Progress | None = None,
              loaded: tuple[torch.nn.Module, RunConfig] | None = None) -> PipelineResult:
    """Run the whole audit and write its files; returns the table and the summary.

    loaded: (model, run) to audit instead of `load_run(cfg.run_dir, ...)`: a model the audit may modify (moved,
    BatchNorm folded, hooks added; `audit.api.run_audit` passes a copy of the caller's module) in eval mode, and
    the RunConfig describing it. Stages: `plan_audit` (checks), `stream_pass` (the maps, scores and counterfactual
    edits, batch by batch), `write_pass` (per_image.csv, cams.npz, errors.csv), `analyse` (summary.json)."""
    t0 = time.perf_counter()
    model, run = loaded if loaded is not None else load_run(cfg.run_dir, cfg.arch, cfg.classes, cfg.source,
                                                            cfg.checkpoint)
    run.input = header_spec(run.input, cfg)
    if run.multilabel:  # one sigmoid output per finding: every finding in one pass (audit/multilabel.py)
        from .multilabel import run_multilabel_audit
        return run_multilabel_audit(cfg, model, run, progress)
    if cfg.findings:
        raise ConfigError("findings: the run is not multi-label (set model.task: multilabel in its config)",
                          param="findings")
    plan = plan_audit(cfg, model, run)
    cam_model, batchnorm = model_for_cam(model, cfg, plan.layer, plan.spec, plan.device)
    cache = OutputCache(plan.out / "cache", {"checkpoint_sha256": run.checkpoint_sha256, "layer": plan.layer,
                                             "target": cfg.target, "input": plan.spec.to_dict(), "amp": cfg.amp,
                                             "channels_last": cfg.channels_last, "fold_bn": cfg.fold_bn,
                                             "model": f"{run.source}:{run.model_name}"}, enabled=cfg.cache)
    passed = stream_pass(plan, cam_model, cache, progress)
    if passed is None:  # a torchrun rank other than 0: rank 0 writes and analyses
        return PipelineResult(out_dir=plan.out, per_image=pd.DataFrame(), summary={}, errors=[])
    from .summary import add_flags
    per_image = add_flags(passed.per_image, plan.kinds, cfg)
    t_write = write_pass(plan, passed, per_image)
    summary = analyse(plan, cam_model, per_image, passed, t0=t0, t_write=t_write)
    summary.cam.batchnorm = batchnorm
    summary.cache = CacheInfo(key=cache.key, enabled=cache.enabled, from_cache=passed.from_cache,
                              computed=passed.computed, processes=plan.world,
                              note=(f"model outputs of {passed.from_cache} images read from the cache; the "
                                    f"model ran on {passed.computed}") if passed.from_cache else "")
    (plan.out / "summary.json").write_text(json.dumps(summary.to_json(), indent=2))
    write_resolved(plan.out / "config.resolved.yaml", cfg, run.to_dict(),
                   {"layer": plan.layer, "cam_resolution": list(passed.cams.shape[1:]), "split": plan.split,
                    "manifest": str(plan.manifest_path), "regions": plan.kinds})
    model.cpu()
    cam_model.cpu()
    return PipelineResult(out_dir=plan.out, per_image=per_image, summary=summary, errors=passed.errors)


def plan_audit(cfg: AuditConfig, model: torch.nn.Module, run: RunConfig) -> AuditPlan:
    """Resolve and check everything the pass needs (manifest and split, layer, target, regions, positive class,
    the out folder); raises ConfigError / ManifestError with one line before any image is read."""
    device = resolve_device(cfg.device)
    full, rows, split, manifest_path = load_audit_manifest(cfg, run)
    spec = run.input
    layer = cfg.layer or default_layer(model, (1, spec.channels, spec.size, spec.size))
    get_module(model, layer)  # validates the name with a listing of candidates
    target_rule = resolve_target(cfg.target, run.classes)
    region_fn, kinds = build_region_fn(cfg)
    positive = cfg.positive or run.positive_class
    if positive is not None and positive not in run.classes:
        raise ConfigError(f"positive {positive!r}: not among the classes {run.classes}", param="positive")
    rank, world = dist_info()
    rows = rows.assign(_row=np.arange(len(rows)))
    if world > 1:
        rows = rows.iloc[rank::world].reset_index(drop=True)
    out = Path(cfg.out) if cfg.out else Path("reports") / run_name(run)
    out.mkdir(parents=True, exist_ok=True)
    return AuditPlan(cfg=cfg, model=model, run=run, device=device, full=full, rows=rows, split=split,
                     manifest_path=manifest_path, layer=layer, target_rule=target_rule, region_fn=region_fn,
                     kinds=kinds, positive=positive, rank=rank, world=world, out=out)


def stream_pass(plan: AuditPlan, cam_model: torch.nn.Module, cache: OutputCache,
                progress: Progress | None = None) -> PassOutput | None:
    """The pass over the audited images: per batch, the model's outputs and Grad-CAM (or the cache's), the maps'
    in-region scores, the counterfactual edits, one table row per image; maps and embeddings go to spill files.
    Under torchrun, rank 0 gathers every rank's part (None on the other ranks). Rows come back in manifest order."""
    from .data import make_loader, with_row
    cfg, run, rows, spec, device = plan.cfg, plan.run, plan.rows, plan.spec, plan.device
    cls_idx = {c: i for i, c in enumerate(run.classes)}
    loader = make_loader(rows, spec, cfg.batch_size, cfg.workers, plan.region_fn, pin_memory=device.type == "cuda")
    tgt_all = []
    cams_spill, emb_spill = SpillArray(plan.out, "cams"), SpillArray(plan.out, "embedding")
    region_cols = region_columns(plan.kinds)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp or "")
    secs = {"model": 0.0, "counterfactual": 0.0, "score": 0.0}
    artifact_regions = plan.artifacts
    partial = plan.out / ("per_image.partial.csv" if plan.world == 1 else f"per_image.partial.rank{plan.rank}.csv")

    def on_batch(batch) -> pd.DataFrame:
        idx = batch.idx
        recs = dict(zip(idx, rows.iloc[list(idx)].to_dict("records")))  # this batch's manifest rows only
        x = normalize(batch.img.to(device, non_blocking=True), spec)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        labels = torch.tensor([cls_idx.get(recs[i]["label"], -1) for i in idx], device=device)
        ids = [recs[i]["image_id"] for i in idx]
        res = cache.get(ids, device)
        if res is None or (plan.target_rule == "true" and not _targets_match(res.target, labels)):
            tm = time.perf_counter()
            res = grad_cam(cam_model, x, plan.layer, plan.target_rule, labels, amp=amp)
            secs["model"] += time.perf_counter() - tm
            cache.put(ids, res)
        probs = torch.softmax(res.logits, 1).cpu().numpy()
        margins = top2_margin(res.logits)
        lodds = log_odds(res.logits)
        ts = time.perf_counter()
        with warnings.catch_warnings():  # all-zero CAMs are counted below and reported in the summary
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            sc = score_batch(res.cams, batch.masks or [{} for _ in idx], plan.kinds, spec.size, cfg.hit_tolerance)
            peak, ent = map_concentration(res.cams)
        secs["score"] += time.perf_counter() - ts
        tgt = res.target.cpu().numpy()
        cf = {}
        if cfg.counterfactual and artifact_regions:
            tc = time.perf_counter()
            cf = counterfactual_batch(cam_model, batch.img, batch.masks or [{} for _ in idx],
                                      artifact_regions, spec, res.target, probs, device, batch_size=cfg.batch_size)
            secs["counterfactual"] += time.perf_counter() - tc
        batch_records = []
        for j, i in enumerate(idx):
            r = recs[i]
            p = probs[j]
            pred = int(p.argmax())
            rec = {"_row": r["_row"], "image_id": r["image_id"], "image": r["image"], "label": r["label"], "split": r["split"],
                   "pred": run.classes[pred], "confidence": float(p[pred]), "margin": float(margins[j]),
                   "correct": bool(r["label"] == run.classes[pred]), "explained": run.classes[int(tgt[j])],
                   "cam_sum": float(res.cams[j].sum()), "cam_peak_share": float(peak[j]),
                   "cam_entropy": float(ent[j]), **batch.source_columns(j)}
            for c, k in cls_idx.items():
                rec[f"p_{c}"] = float(p[k])
            for c, k in cls_idx.items():
                rec[f"logodds_{c}"] = float(lodds[j, k])
            for col in region_cols:
                rec[col] = float(sc[col][j]) if col in sc else float("nan")
            for col, v in cf.items():
                rec[col] = v[j].item() if hasattr(v[j], "item") else v[j]
            rec.update(batch.region_columns(j))  # detector scores, known presence, mask warnings from the workers
            batch_records.append(with_row(rec, r))
        cams_spill.append(res.cams.cpu().numpy())
        emb_spill.append(res.features.cpu().numpy())
        tgt_all.append(tgt)
        release_freed_heap()  # else glibc keeps the freed activation buffers and the resident set creeps up with N
        # one small DataFrame per batch: a dict per image would cost ~8 KB each at the end of a long run
        return pd.DataFrame.from_records(batch_records)

    streamed = stream_batches(loader, rows, on_batch, progress=progress, partial=partial, row_col="_row",
                              drop_in_partial=("_row",))
    records, errors = streamed.frames, streamed.failures
    secs.update(decode=streamed.t_decode, regions=streamed.t_regions)
    tgt_np = np.concatenate(tgt_all).astype(np.int64) if tgt_all else np.zeros(0, np.int64)
    cams_out, emb_out = cams_spill, emb_spill  # on disk; under torchrun rank 0 holds the gathered arrays
    from_cache, computed = cache.hits, cache.computed
    if plan.world > 1:
        mine = RankPart(records, cams_spill.read(), emb_spill.read(), tgt_np, errors, dict(secs), from_cache,
                        computed)
        gathered: list[RankPart] = gather_to_rank0(mine)
        if plan.rank != 0:
            return None
        records = [r for g in gathered for r in g.records]
        cams_out = np.concatenate([g.cams for g in gathered if len(g.cams)])
        emb_out = np.concatenate([g.emb for g in gathered if len(g.emb)])
        tgt_np = np.concatenate([g.targets for g in gathered])
        errors = sorted((e for g in gathered for e in g.errors), key=lambda e: e[0])
        secs = {k: sum(g.seconds[k] for g in gathered) for k in mine.seconds}
        from_cache, computed = sum(g.from_cache for g in gathered), sum(g.computed for g in gathered)
    per_image = concat_frames(records)
    if per_image.empty:
        raise ManifestError(f"{plan.manifest_path}: none of the {len(rows)} audited images could be read "
                            f"(first error: {errors[0].reason if errors else 'none'})")
    order = np.argsort(per_image["_row"].to_numpy(), kind="stable")
    per_image = per_image.iloc[order].reset_index(drop=True).drop(columns=["_row"])
    tgt_np = tgt_np[order]
    if (order != np.arange(len(order))).any():  # one process streams in order; torchrun ranks interleave
        cams_out, emb_out = (a.read() if isinstance(a, SpillArray) else a for a in (cams_out, emb_out))
        cams_out, emb_out = cams_out[order], emb_out[order]
    if not isinstance(cams_out, SpillArray):  # read into memory: the files are no longer needed
        cams_spill.discard()
        emb_spill.discard()
    return PassOutput(per_image=per_image, cams=cams_out, emb=emb_out, targets=tgt_np, errors=errors,
                      seconds=secs, from_cache=from_cache, computed=computed)


def write_pass(plan: AuditPlan, passed: PassOutput, per_image: pd.DataFrame) -> float:
    """per_image.csv, cams.npz (image_id, cam N×h×w, layer, embedding N×D, target) and errors.csv; the spill files
    are removed. Returns the seconds spent."""
    tw = time.perf_counter()
    per_image.to_csv(plan.out / "per_image.csv", index=False)
    write_npz(plan.out / "cams.npz", {"image_id": np.array(per_image["image_id"].tolist(), dtype=str),
                                      "cam": passed.cams, "layer": np.array(plan.layer), "embedding": passed.emb,
                                      "target": passed.targets})
    for a in (passed.cams, passed.emb):
        if isinstance(a, SpillArray):
            a.discard()
    write_errors(plan.out / "errors.csv", passed.errors)
    return time.perf_counter() - tw


def analyse(plan: AuditPlan, cam_model: torch.nn.Module, per_image: pd.DataFrame, passed: PassOutput, *,
            t0: float, t_write: float) -> AuditSummary:
    """The summary of a finished pass: statistics and operating points (`summary.build_summary`, with the
    validation split's predictions when there is one), the notes, the counterfactual rates and whose flips,
    discover and the sanity check when asked for, the gates and the hidden shortcuts."""
    from .summary import build_summary, hidden_shortcuts
    cfg, run, spec, full, split = plan.cfg, plan.run, plan.spec, plan.full, plan.split
    secs = passed.seconds
    cam_hw = tuple(passed.cams.shape[1:])
    val_probs = None
    t_val = 0.0
    val_name = next((v for v in VALIDATION_SPLITS if v != split and (full["split"] == v).any()), None)
    if plan.positive is not None and val_name is not None:
        tv = time.perf_counter()
        val_rows = full[full["split"] == val_name].reset_index(drop=True)
        val_probs = (val_rows["label"].to_numpy(),
                     log_odds(predict_logits(cam_model, val_rows, spec, plan.device, cfg.batch_size, cfg.workers)))
        t_val = time.perf_counter() - tv
    summary = build_summary(per_image, plan.kinds, run, cfg, split=split, manifest=plan.manifest_path,
                            layer=plan.layer, cam_hw=cam_hw, n_skipped=len(passed.errors),
                            timing={"total_s": time.perf_counter() - t0, "model_s": secs["model"],
                                    "counterfactual_s": secs["counterfactual"], "val_inference_s": t_val,
                                    "scoring_s": secs["score"], "writing_s": t_write,
                                    "decode_in_workers_s": secs["decode"], "regions_in_workers_s": secs["regions"]},
                            positive=plan.positive, val=val_probs)
    if val_probs is not None and summary.operating_points is not None:
        summary.operating_points.validation_split = val_name
    summary.data.split_note = split_note(full, split)
    summary.data.grid_note = grid_note(cfg.preset_input, spec)
    summary.data.bit_depth_note = bit_depth_note(per_image["bit_depth"], spec.scale16)
    summary.cam.note = early_layer_note(plan.model, plan.layer, cam_hw, spec) if not cfg.layer else None
    artifact_regions = plan.artifacts
    if cfg.counterfactual and artifact_regions:
        cfr = counterfactual_rates(per_image, artifact_regions, min_n=cfg.min_n, n_boot=cfg.n_boot, seed=cfg.seed)
        cfr["method"] = method_description("median", 2, 3)
        cfr["cost"].update(seconds=round(secs["counterfactual"], 3),
                           share_of_model_time=round(secs["counterfactual"] / max(secs["model"], 1e-9), 3))
        cfr["attribution"] = attribute_flips(per_image, artifact_regions, min_n=cfg.min_n)
        summary.counterfactual = Counterfactual.from_json(jsonable(cfr))
    if cfg.discover:
        from .discover import discover
        td = time.perf_counter()
        summary.discover = discover(plan.out, seed=cfg.seed, min_n=cfg.min_n, regions=plan.kinds).summary
        summary.timing["discover_s"] = round(time.perf_counter() - td, 3)
    if cfg.sanity:
        from .sanity import load_sample, sanity_check
        ts = time.perf_counter()
        x, _ids, smasks = load_sample(plan.rows, spec, n=cfg.sanity_n, seed=cfg.seed, region_fn=plan.region_fn,
                                      device=plan.device)
        summary.sanity = jsonable(sanity_check(plan.model, plan.layer, x, target=plan.target_rule, seed=cfg.seed,
                                               masks=smasks, n_boot=cfg.n_boot, batch_size=cfg.batch_size))
        summary.timing["sanity_s"] = round(time.perf_counter() - ts, 3)
    apply_gates(summary, cfg.gates, cfg.undefined_gates)
    if summary.counterfactual is not None:  # after the gates: their thresholds are the alarms
        finer = finer_layer(plan.model, plan.layer, (1, spec.channels, spec.size, spec.size))
        if finer:  # where a region smaller than a map cell can be resolved
            summary.cam.finer_layer = FinerLayer(layer=finer[0], resolution=list(finer[1]))
        summary.counterfactual.hidden = hidden_shortcuts(summary)
    summary.data.n_zero_cam = int((per_image["cam_sum"] <= 0).sum())
    return summary


def _targets_match(cached: torch.Tensor, labels: torch.Tensor) -> bool:
    lab = labels.to(cached.device)
    return bool(((lab < 0) | (cached == lab)).all())
