"""The typed summary of an audit: what `summary.json` holds, as dataclasses with one to/from-JSON pair.

`AuditSummary.from_json(d)` parses a summary.json dict (strict JSON: NaN is `null`) into typed records;
`AuditSummary.to_json()` writes it back (NaN → `null`; a field marked `omit_none` is left out while it is None,
so an optional section such as `counterfactual` appears only when it was computed). Every field carries its
documentation (`doc`), from which docs/summary_schema.md is generated (audit/summary_schema.py): the types are the
schema. An **estimate** is `audit.stats.Estimate` ({value, lo, hi, n, too_small, p, note} in JSON).

Sections whose shape belongs to one analysis and is documented there (discover, sanity, isic_metrics,
by_artifact, by_group rows) are typed as plain JSON (`dict` / `list[dict]`).
"""
from __future__ import annotations

import math
import types
import typing
import warnings
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin

import numpy as np
from pathlib import PurePath

from .stats import Estimate

SCHEMA_VERSION = "2.0"  # bump the major on a breaking change
#                         (2.0: verdict "inconclusive" for undefined gates, which 1.0 counted as "fail")

R = TypeVar("R", bound="Record")


class SummaryFormatError(ValueError):
    """summary.json does not have the documented shape; the message names the key (`regions.text.lift`)."""


def doc(text: str, *, omit_none: bool = False, default: Any = MISSING, factory: Any = MISSING) -> Any:
    """A dataclass field with its schema documentation. omit_none: left out of the JSON while it is None."""
    kw: dict[str, Any] = {"metadata": {"doc": text, "omit_none": omit_none}}
    if default is not MISSING:
        kw["default"] = default
    elif factory is not MISSING:
        kw["default_factory"] = factory
    elif omit_none:
        kw["default"] = None
    return field(**kw)


def jsonable(o: Any) -> Any:
    """Strict JSON of any value a summary holds (the project's one JSON converter): records and estimates as dicts,
    NaN/inf → None, numpy scalars and arrays → Python, paths → str."""
    if isinstance(o, Record):
        return o.to_json()
    if isinstance(o, Estimate):
        return jsonable(o.to_dict())
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, PurePath):
        return str(o)
    return o


def estimate_from_json(d: Any, where: str = "estimate") -> Estimate:
    """{value, lo, hi, n, too_small, p, note} → Estimate (null → NaN; keys left out take Estimate's defaults)."""
    if not isinstance(d, dict):
        raise SummaryFormatError(f"{where}: expected an estimate {{value, lo, hi, n, ...}}, got {type(d).__name__}")

    def num(k: str) -> float:
        v = d.get(k)
        return math.nan if v is None else float(v)
    p = d.get("p")
    return Estimate(value=num("value"), lo=num("lo"), hi=num("hi"), n=int(d.get("n") or 0),
                    too_small=bool(d.get("too_small", False)), p=None if p is None else float(p),
                    note=str(d.get("note") or ""))


def _load(tp: Any, v: Any, where: str) -> Any:
    if tp is Any or tp is dict or tp is list or tp is object:
        return jsonable(v)
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if v is None:
            return math.nan if inner == [float] else None  # present and null: a NaN float, else None
        if len(inner) == 1:
            return _load(inner[0], v, where)
        return jsonable(v)  # a union of plain types (int | str): as written
    if v is None and tp is float:
        return math.nan
    if v is None:
        raise SummaryFormatError(f"{where}: expected {getattr(tp, '__name__', tp)}, got null")
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp.from_json(v, where)
    if tp is Estimate:
        return estimate_from_json(v, where)
    if origin is list:
        if not isinstance(v, list):
            raise SummaryFormatError(f"{where}: expected a list, got {type(v).__name__}")
        return [_load(args[0], x, f"{where}[{i}]") for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict):
            raise SummaryFormatError(f"{where}: expected an object, got {type(v).__name__}")
        return {str(k): _load(args[1], x, f"{where}.{k}") for k, x in v.items()}
    if tp in (float, int, str, bool):
        if tp is not str and isinstance(v, str) or isinstance(v, (dict, list)):
            raise SummaryFormatError(f"{where}: expected {tp.__name__}, got {v!r:.60}")
        return tp(v)
    raise TypeError(f"{where}: unsupported field type {tp!r}")


class Record:
    """Base of the summary's dataclasses: `to_json()` / `from_json(d)` from the field types."""

    _hints: ClassVar[dict[type, dict[str, Any]]] = {}

    @classmethod
    def hints(cls) -> dict[str, Any]:
        if cls not in Record._hints:
            Record._hints[cls] = typing.get_type_hints(cls)
        return Record._hints[cls]

    def to_json(self) -> dict:
        """Strict-JSON dict (NaN → None), fields in declaration order; omit_none fields left out while None."""
        return {f.name: jsonable(getattr(self, f.name)) for f in fields(self)  # type: ignore[arg-type]
                if not (f.metadata.get("omit_none") and getattr(self, f.name) is None)}

    @classmethod
    def from_json(cls: type[R], d: Any, where: str | None = None) -> R:
        """Parse `d` (a summary.json dict); a missing key takes the field's default (an error if it has none), an
        unknown key is dropped with a warning naming it."""
        where = where or cls.__name__
        if not isinstance(d, dict):
            raise SummaryFormatError(f"{where}: expected an object, got {type(d).__name__}")
        hints, kw = cls.hints(), {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name in d:
                kw[f.name] = _load(hints[f.name], d[f.name], f"{where}.{f.name}")
            elif f.default is MISSING and f.default_factory is MISSING:
                raise SummaryFormatError(f"{where}: key '{f.name}' missing")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
        if unknown:
            warnings.warn(f"{where}: keys not in the schema dropped: {', '.join(unknown)}", UserWarning,
                          stacklevel=2)
        return cls(**kw)


# ================================================================================================ sections

@dataclass
class RunInfo(Record):
    name: str | None = doc("the run directory's name (null for an in-memory model)")
    run_dir: str | None = doc("the run directory")
    model: str = doc('`source:name`; "(one sigmoid logit)" or "(sigmoid output k of n)" appended when a sigmoid '
                     'output is audited as a binary model')
    checkpoint: str | None = doc("the checkpoint file audited")
    checkpoint_sha256: str | None = doc("its SHA-256")
    classes: list[str] = doc("class names in logit order")
    state_key: str | None = doc("the checkpoint entry audited (null: the default search)")
    weights_note: str | None = doc("other weights the checkpoint holds that were not audited (e.g. timm EMA "
                                   "weights); null if none")


@dataclass
class DataInfo(Record):
    manifest: str = doc("the manifest audited")
    split: str = doc("the split audited (`all`: every row)")
    n: int = doc("images audited")
    n_skipped: int = doc("images that could not be audited (see errors.csv)")
    n_zero_cam: int = doc("all-zero maps (their fractions are NaN)", default=0)
    split_note: str | None = doc("when no split chose the audited rows (no split column, or `--split all`): the "
                                 "audit may be auditing training data", omit_none=True)
    grid_note: str | None = doc("when the preset's `input:` differs from the model's preprocessing, which the "
                                "audit uses", omit_none=True)
    bit_depth_note: str | None = doc("when some audited images are 16-bit grayscale or 32-bit float: how many, the "
                                     "`input.scale16` rule applied, and whether bit depths are mixed",
                                     omit_none=True)


@dataclass
class FinerLayer(Record):
    layer: str = doc("module path")
    resolution: list[int] = doc("[h, w] of its maps")


@dataclass
class CamInfo(Record):
    method: str = doc('"Grad-CAM (Selvaraju et al. 2017)"')
    layer: str = doc("the module whose activations and gradients make the maps")
    resolution: list[int] = doc("[h, w] of the maps at that layer")
    target: str = doc("the class each map explains (`pred` or `label`)")
    upsampling: str = doc("how maps are brought to the model input")
    precision: str = doc("fp32, bf16 or fp16")
    memory_format: str = doc("channels_last or contiguous")
    batchnorm: str | None = doc('how many eval-mode BatchNorm2d layers were folded into the convolution before '
                                'them, or "as loaded (--no-fold-bn)"', omit_none=True)
    note: str | None = doc("only when the default layer is an early one with most of the parameters after it: "
                           "say so, choose a later --layer", omit_none=True)
    finer_layer: FinerLayer | None = doc("with --counterfactual, the end of the previous stage, whose maps have at "
                                         "least twice the side (`audit.cam.finer_layer`)", omit_none=True)


@dataclass
class Calibration(Record):
    ece: Estimate = doc("ECE of the top-1 confidence, 10 equal-width bins (Guo et al. 2017); percentile bootstrap "
                        "CI; too small below min_n")
    ece_if_calibrated: float = doc("the mean ECE of a perfectly calibrated model with the same confidences, 200 "
                                   "draws: the plug-in estimator's floor at this n")
    n_bins: int = doc("bins")
    method: str = doc("the method in words")


@dataclass
class ClassRecall(Record):
    n: int = doc("images of the class")
    recall: Estimate = doc("top-1 recall (Wilson)")
    too_small: bool = doc("n < min_n")


@dataclass
class RegionSummary(Record):
    kind: str = doc('"target" or "artifact"')
    n_present: int = doc("images with a usable mask and map")
    n_missing: int = doc("images without (see missing_reasons)")
    median_area: float = doc("median mask area as a share of the image, in [0, 1]")
    median_lift: float = doc("median of (CAM share in the region) / (its area share); 1 = no more evidence than "
                             "its size")
    lift: Estimate = doc("the same median with a bootstrap 95% CI and n")
    median_frac_layer_res: float = doc("median CAM share in the region, scored at layer resolution")
    pointing_game: Estimate = doc("share of images whose CAM peak lies in the region (Zhang et al. 2018), Wilson")
    stats: dict[str, Estimate] = doc(
        "`audit.stats.region_stats`: mean_/median_/spearman_conf_{all,correct,incorrect}, diff_mean, diff_median "
        "(correct − incorrect), mannwhitney_u (p in `p`), auroc_error (errors are the positive class); the "
        "spearman_conf_* rank the confidence by the top-1 log-odds, so images at 1.0 in float32 are still ordered")
    missing_reasons: dict[str, int] | None = doc(
        'only when n_missing > 0: {reason: images}, the three most frequent, the rest as "other" (e.g. "mask file '
        'not found", "not detected", "all-zero map")', omit_none=True)


@dataclass
class ByGroup(Record):
    columns: list[str] = doc('["label", --by ...]')
    rows: list[dict] = doc("tidy records: region, group_col, group, n, stat, value, lo, hi, too_small, p, note")


@dataclass
class HighConfError(Record):
    image_id: str = doc("image")
    label: str = doc("true class")
    pred: str = doc("predicted class")
    confidence: float = doc("top-1 probability")
    off_target: bool = doc("flag_off_target")
    flips_without: list[str] | None = doc("with the counterfactual check: the artifacts whose removal changed the "
                                          "prediction", omit_none=True)


@dataclass
class HighConfErrors(Record):
    threshold: float = doc("the confidence at or above which an error counts (`high_conf`)")
    rate: Estimate = doc("share of audited images that are such errors (Wilson)")
    top: list[HighConfError] = doc("the 10 most confident, ties by logit margin")


@dataclass
class OffTarget(Record):
    rate: Estimate = doc("share flagged, over the images where the flag is defined (its n)")
    n_undefined: int = doc("images with no defined target frac or artifact lift (e.g. all-zero maps): neither on "
                           "nor off target")
    rule: str = doc("the rule in words")
    artifact_lift: float = doc("lift above which an artifact flags an image; also where the terminal and report "
                               "colour a lift when no max_artifact_lift gate is set")
    target_frac: float = doc("target share below which an image is flagged; likewise for min_median_target_frac")


@dataclass
class OperatingPoint(Record):
    target_sensitivity: float = doc("the sensitivity the threshold is tuned for")
    threshold: float = doc("a probability (σ of threshold_logodds); NaN when it cannot be tuned")
    fold_thresholds: list[float] | None = doc("cross-fit: one per fold, as probabilities")
    tp: int | None = doc("true positives on the audited split (null when not tuned)")
    fn: int | None = doc("false negatives")
    tn: int | None = doc("true negatives")
    fp: int | None = doc("false positives")
    sensitivity: Estimate = doc("tp / (tp + fn), Wilson 95% CI")
    specificity: Estimate = doc("tn / (tn + fp), Wilson")
    ppv: Estimate = doc("tp / (tp + fp), Wilson")
    npv: Estimate = doc("tn / (tn + fn), Wilson")
    threshold_logodds: float | None = doc("the tuned threshold on the log-odds (when the logits were ranked)",
                                          omit_none=True)


@dataclass
class Top1(Record):
    tp: int | None = doc("true positives of the argmax decision")
    fn: int | None = doc("false negatives")
    tn: int | None = doc("true negatives")
    fp: int | None = doc("false positives")
    sensitivity: Estimate = doc("Wilson 95% CI")
    specificity: Estimate = doc("Wilson")
    ppv: Estimate = doc("Wilson")
    npv: Estimate = doc("Wilson")


@dataclass
class OperatingPoints(Record):
    tuning: str = doc('"validation split" or "cross-fit on audited split (no validation split)"')
    warning: str | None = doc("how the thresholds were tuned, or why they cannot be (no positives of the class)")
    folds: int | None = doc("cross-fit: the number of folds; else null")
    rule: str = doc("how a threshold is chosen: the k-th highest tuning positive, k = ⌈target·(P+1)⌉")
    n: int = doc("audited images")
    n_pos: int = doc("positives among them")
    n_neg: int = doc("negatives")
    points: list[OperatingPoint] = doc("one per target sensitivity")
    top1: Top1 | None = doc("the argmax decision")
    positive_class: str = doc("the safety-critical class", default="")
    score: str = doc("what was ranked: the log-odds of P(positive) from the logits, or P itself for a "
                     "per_image.csv without logodds columns", default="")
    validation_split: str | None = doc("the split's name (the first of val, valid, validation present); only when "
                                       "tuned on one", omit_none=True)


@dataclass
class GroupAccuracy(Record):
    n: int = doc("images in the group")
    accuracy: Estimate = doc("Wilson 95% CI")
    too_small: bool = doc("n < min_n")


@dataclass
class CfGroup(Record):
    n: int = doc("tested images")
    too_small: bool = doc("n < min_n")
    flip_rate: Estimate = doc("share whose prediction changed when the region was filled (Wilson)")
    mean_delta: Estimate = doc("mean P_edit − P_orig of the explained class, bootstrap CI; negative: the model uses "
                               "the region")
    n_flips: int | None = doc("flips (when not too small)", omit_none=True)


@dataclass
class CfRegion(CfGroup):
    n_absent: int = doc("images without the region", default=0)
    n_too_large: int | None = doc("images where the region was too large to fill", default=None)
    by_class: dict[str, CfGroup] | None = doc("the same per class", omit_none=True)


@dataclass
class CfCost(Record):
    n_edited: int = doc("edited images (region edits)")
    n_forward: int | None = doc("extra forward passes", default=None)
    seconds: float | None = doc("time", default=None)
    share_of_model_time: float | None = doc("seconds ÷ the model's time", omit_none=True)


@dataclass
class FlipAttribution(Record):
    region: str = doc("the region whose flips are attributed")
    contains: str = doc("an artifact that lies inside it")
    n_inside: int = doc("images where ≥ 50% of `contains` lies inside `region`")
    n_without: int = doc("images without `contains`")
    median_within: float = doc("median share of its pixels inside")
    flips_inside: Estimate = doc("flip rate of `region` there (Wilson)")
    flips_without: Estimate = doc("flip rate of `region` where `contains` is absent")
    same_pixels: bool = doc("the two masks are the same pixels")
    decision: str = doc("contained / own effect / undetermined")
    text: str = doc("the finding in words")


@dataclass
class HiddenShortcut(Record):
    region: str = doc("an artifact the model depends on where its maps do not show it")
    flip_rate: Estimate = doc("its counterfactual flip rate")
    lift: Estimate = doc("its median lift")
    median_frac: Estimate = doc("its median CAM share")
    flip_allowed: float = doc("the flip rate allowed (the gate, else 0.10)")
    lift_alarm: float = doc("the lift alarm")
    median_area: float = doc("median region area")
    cell_area: float = doc("one map cell's share of the image")
    shown_artifacts: list[str] = doc("other artifacts that flip decisions and that the maps show: filling this "
                                     "region may remove them too")
    text: str = doc("the finding in words")


@dataclass
class Counterfactual(Record):
    method: str = doc("how a region is removed")
    min_n: int = doc("below this a rate is too small")
    regions: dict[str, CfRegion] = doc("artifact → its flip rate, mean change and per-class figures")
    cost: CfCost = doc("what the check cost")
    attribution: list[FlipAttribution] = doc("whose flips: `audit.counterfactual.attribute_flips`",
                                             factory=list)
    hidden: list[HiddenShortcut] = doc("the shortcuts the maps do not show (`audit.summary.hidden_shortcuts`)",
                                       factory=list)


@dataclass
class Gate(Record):
    name: str = doc("the gate, with its region or point in brackets (`max_artifact_lift[text]`)")
    value: float = doc("the measured value (null: not measured)")
    ci: list[float] | None = doc("its 95% CI [lo, hi]")
    threshold: float = doc("the threshold")
    passed: bool | None = doc("true / false / null = not measured")
    status: str = doc("pass / fail / undefined")
    n: int | None = doc("the n the value rests on")
    note: str = doc('why undefined: "too small (n=3)", "not measured", "counterfactual check not run", ...',
                    default="")

    @property
    def lo(self) -> float:
        return self.ci[0] if self.ci else math.nan

    @property
    def hi(self) -> float:
        return self.ci[1] if self.ci else math.nan


@dataclass
class VerdictDetail(Record):
    policy: str = doc("what an undefined gate does: fail / inconclusive / ignore")
    n_pass: int = doc("gates passed")
    n_fail: int = doc("gates failed")
    n_undefined: int = doc("gates not measured")
    verdict: str = doc("as `verdict`")
    decided_by: list[str] = doc("the gates that decided the verdict: the failed ones, or the undefined ones for "
                                "inconclusive")
    headline: str = doc("one sentence naming them with their values or n, shown in the terminal and under "
                        "report.html's verdict")


@dataclass
class CacheInfo(Record):
    key: str = doc("the model-output cache key")
    enabled: bool = doc("whether the cache was used")
    from_cache: int = doc("images whose model outputs were read from `<out>/cache/`")
    computed: int = doc("images that ran the model")
    processes: int = doc("processes (torchrun ranks)")
    note: str = doc("the same in words; empty when nothing was cached")


# ================================================================================================ the summary

@dataclass
class AuditSummary(Record):
    """summary.json of a single-label audit (docs/summary_schema.md)."""

    schema_version: str = doc("the major changes on a breaking change (2.0: a gate that could not be measured "
                              "makes the verdict `inconclusive` by default; 1.0 counted it as `fail`)")
    run: RunInfo = doc("the model audited")
    data: DataInfo = doc("the images audited")
    cam: CamInfo = doc("how the maps were made")
    accuracy: Estimate = doc("top-1 accuracy (Wilson)")
    per_class: dict[str, ClassRecall] = doc("class → its recall")
    regions: dict[str, RegionSummary] = doc("region → its dataset-level figures")
    high_conf_errors: HighConfErrors = doc("wrong with confidence ≥ high_conf")
    timing: dict[str, float] = doc(
        "seconds: total_s, model_s, scoring_s, writing_s, counterfactual_s, val_inference_s, discover_s, sanity_s; "
        "decode_in_workers_s and regions_in_workers_s are CPU seconds summed over DataLoader workers (they overlap "
        "the model)")
    calibration: Calibration = doc("top-1 calibration")
    operating_points: OperatingPoints | None = doc("present with a positive class: sensitivity-targeted "
                                                   "thresholds on P(positive)", omit_none=True)
    isic_metrics: dict | None = doc(
        "≥ 3 classes: balanced_accuracy, accuracy, auc / pauc / auc_above per class and their means, ranking each "
        "class's log-odds (see audit/thresholds.py for the two partial-AUC definitions)", omit_none=True)
    by_artifact: dict = doc(
        "artifact → {n_known, with, without: {n, accuracy, sensitivity, specificity, mean_p_positive_neg}, "
        "diff_mean_p_positive_neg, text, n_unknown (images whose presence is unknown, e.g. the detector failed: in "
        "neither stratum)} for detector regions with a presence decision and 0/1 `--by` columns "
        "(`audit.association.model_by_artifact`)", factory=dict)
    accuracy_by_group: dict[str, dict[str, GroupAccuracy]] | None = doc(
        "with `--by`: column → group → accuracy, largest group first, a missing value as the group `<missing>`; "
        "the `--by` columns include the image-format columns (`src_mode`, …)", omit_none=True)
    by_group: ByGroup | None = doc("region statistics by class and `--by` group", omit_none=True)
    off_target: OffTarget | None = doc("the off-target flag's rate and rule", omit_none=True)
    counterfactual: Counterfactual | None = doc("with --counterfactual: what removing each artifact does",
                                                omit_none=True)
    discover: dict | None = doc(
        "with --discover or `cli.py discover`: {method, layer, n, n_zero_cam, min_n, seed, regions, "
        "median_target_frac, clusters: {per_class, groups}, slices: {n_slices, gamma, pca_components, …, groups}, "
        "ranking: [{kind, id, rank, n, suspicion, reason, flag, prototypes, text}], files}; each group: {kind, id, "
        "pred_class, n, too_small, accuracy, accuracy_rest, gap {value, lo, hi}, mean_confidence, labels, preds, "
        "map {concentration, off_centre, top10_share, peak, png}, evidence, lift, over_represented, prototypes, "
        "suspicion, suspicion_parts, reason, flag (worse / off-target / worse+off-target / null), rank, text}. See "
        "`audit/discover.py` for every formula", omit_none=True)
    sanity: dict | None = doc(
        "with --sanity: {method, layer, explainer, n_images, seed, threshold, units, original, steps: [{mode "
        "(cascade/independent), step, unit, randomised, position, spearman, ssim (estimates), n_undefined, "
        "n_nonfinite, region_fracs}], full_randomisation, head_randomisation, gate_value, verdict "
        "(pass/fail/undefined), verdict_text, timing_s}; see `audit/sanity.py`", omit_none=True)
    gates: list[Gate] = doc("the sign-off gates", factory=list)
    verdict: str = doc(
        '"pass" (every gate passed; under `gates.undefined: ignore`, every measured gate, at least one), "fail" (a '
        'measured gate failed; under `gates.undefined: fail`, also a gate not measured), "inconclusive" (none '
        'failed, some could not be measured: the default policy), "none" (no gates configured)', default="none")
    verdict_detail: VerdictDetail | None = doc("how the verdict was reached", omit_none=True)
    cache: CacheInfo | None = doc("the model-output cache", omit_none=True)

    # conveniences for readers (not part of the JSON)
    @property
    def verdict_headline(self) -> str:
        """The sentence naming the gates that decided the verdict ("" without gates)."""
        return self.verdict_detail.headline if self.verdict_detail else ""

    @property
    def n_images(self) -> int:
        return self.data.n

    @property
    def n_skipped(self) -> int:
        return self.data.n_skipped

    @property
    def classes(self) -> list[str]:
        return list(self.run.classes)

    def targets(self) -> dict[str, RegionSummary]:
        return {r: e for r, e in self.regions.items() if e.kind == "target"}

    def artifacts(self) -> dict[str, RegionSummary]:
        return {r: e for r, e in self.regions.items() if e.kind == "artifact"}

    def gate(self, prefix: str) -> Gate | None:
        """The first gate whose name starts with `prefix`, or None."""
        return next((g for g in self.gates if g.name.startswith(prefix)), None)


def record_types(root: type = AuditSummary) -> list[tuple[str, type]]:
    """(dotted key, record type) for every typed section below `root`, depth first: ("", AuditSummary),
    ("run", RunInfo), ("regions.<name>", RegionSummary), ("gates[]", Gate), ..."""
    out: list[tuple[str, type]] = []

    def visit(key: str, tp: Any) -> None:
        origin, args = get_origin(tp), get_args(tp)
        if origin in (Union, types.UnionType):
            for a in args:
                visit(key, a)
        elif origin is list and args:
            visit(f"{key}[]", args[0])
        elif origin is dict and len(args) == 2:
            visit(f"{key}.<{'name'}>", args[1])
        elif isinstance(tp, type) and is_dataclass(tp) and issubclass(tp, Record):
            if any(k == key for k, _ in out):
                return
            out.append((key, tp))
            for f in fields(tp):
                visit(f"{key}.{f.name}" if key else f.name, tp.hints()[f.name])

    visit("", root)
    return out


def type_name(tp: Any) -> str:
    """A field type as the schema shows it: `estimate`, `number`, `list[Gate]`, `Gate or null`, ..."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is list:
        return f"list[{type_name(args[0])}]"
    if origin is dict:
        return f"{{name: {type_name(args[1])}}}"
    return {float: "number", int: "integer", str: "string", bool: "boolean", type(None): "null",
            Estimate: "estimate", dict: "object", list: "list"}.get(tp, getattr(tp, "__name__", str(tp)))
