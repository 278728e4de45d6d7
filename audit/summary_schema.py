"""The documented schema of summary.json: one entry per key, from which docs/summary_schema.md is written
(`python -m audit.summary_schema` rewrites it; tests/test_scores_gates.py checks that the
file is current and tests/test_cli.py that an audit writes no undocumented key)."""
from __future__ import annotations

import sys
from pathlib import Path

from .summary import SCHEMA_VERSION

INTRO = (
    'Strict JSON (NaN is written as `null`). An **estimate** is `{value, lo, hi, n, too_small, p, note}`: `value` is '
    '`null` when undefined or when the group is too small (`too_small: true`, n below `min_n`, default 10); `lo`/`hi` '
    'are a 95% CI (Wilson for rates, seeded percentile bootstrap otherwise, `n_boot` resamples).'
)

#: key (dotted for a nested entry) → what it holds
KEYS: dict[str, str] = {
    'schema_version': (
        '"2.0"; the major changes on a breaking change (2.0: a gate that could not be measured makes the verdict '
        '`inconclusive` by default; 1.0 counted it as `fail`)'
    ),
    'run': (
        'name, run_dir, model (`source:name`; "(one sigmoid logit)" or "(sigmoid output k of n)" appended when a '
        'sigmoid output is audited as a binary model), checkpoint, checkpoint_sha256, classes, state_key (the '
        'checkpoint entry audited, null = the default search), weights_note (other weights the checkpoint holds '
        'and that were not audited, e.g. timm EMA weights; null if none)'
    ),
    'data': (
        'manifest, split, n (audited), n_skipped (see errors.csv), n_zero_cam (all-zero maps: their fractions are'
        " NaN), grid_note (when the preset's `input:` differs from the model's preprocessing, which the audit "
        'uses), bit_depth_note (when some audited images are 16-bit grayscale or 32-bit float: how many, the '
        '`input.scale16` rule applied, and whether bit depths are mixed), split_note (when no split chose the '
        'audited rows, no split column or `--split all`: the audit may be auditing training data)'
    ),
    'cam': (
        'method, layer, resolution [h, w], target rule, upsampling, precision (fp32, bf16, fp16), memory_format '
        '(channels_last, contiguous), batchnorm (how many eval-mode BatchNorm2d layers were folded into the '
        'convolution before them, or "as loaded (--no-fold-bn)"), note (only when the default layer is an early '
        'one with most of the parameters after it: say so, choose a later --layer); finer_layer ({layer, '
        'resolution}: with --counterfactual, the end of the previous stage, whose maps have at least twice the '
        'side; `audit.cam.finer_layer`)'
    ),
    'accuracy': (
        'estimate (Wilson)'
    ),
    'calibration': (
        '{ece: estimate (top-1 confidence, 10 equal-width bins, Guo et al. 2017; percentile bootstrap CI; too '
        'small below min_n), ece_if_calibrated (the mean ECE of a perfectly calibrated model with the same '
        "confidences, 200 draws: the plug-in estimator's floor at this n), n_bins, method}"
    ),
    'per_class': (
        'class → {n, recall (estimate), too_small}'
    ),
    'regions': (
        'region → {kind (target/artifact), n_present, n_missing, missing_reasons (only when n_missing > 0: '
        '{reason: images}, the three most frequent, the rest as "other"; e.g. "mask file not found", "not '
        'detected", "all-zero map"), median_area, median_lift, lift (estimate of the median lift, bootstrap), '
        'median_frac_layer_res, pointing_game (estimate), stats (`audit.stats.region_stats`; its spearman_conf_* '
        'rank the confidence by the top-1 log-odds, so the images at 1.0 in float32 are still ordered)}'
    ),
    'regions.*.stats': (
        'mean_/median_/spearman_conf_{all,correct,incorrect}, diff_mean, diff_median (correct − incorrect), '
        'mannwhitney_u (p in `p`), auroc_error (errors are the positive class): estimates'
    ),
    'by_group': (
        '{columns: ["label", --by ...], rows: tidy records region, group_col, group, n, stat, value, lo, hi, '
        'too_small, p, note}'
    ),
    'high_conf_errors': (
        '{threshold, rate (estimate), top: [{image_id, label, pred, confidence, off_target, flips_without (with '
        'the counterfactual check: the artifacts whose removal changed the prediction)}]}; the top 10 by '
        'confidence, ties by logit margin'
    ),
    'off_target': (
        '{rate (estimate over the images where the flag is defined: its n), n_undefined (images with no defined '
        'target frac or artifact lift, e.g. all-zero maps: neither on nor off target), rule, artifact_lift and '
        'target_frac (its thresholds; also where the terminal and report colour a lift or a target share when no '
        'max_artifact_lift / min_median_target_frac gate is set)}'
    ),
    'operating_points': (
        'present with a positive class: {positive_class, tuning ("validation split" or "cross-fit on audited '
        'split (no validation split)"), validation_split (the split\'s name, the first of val, valid, validation '
        'present; only when tuned on one), warning (how the thresholds were tuned, or why they cannot be: no '
        'positives of the class), folds (cross-fit: the number of folds; else null), rule (how a threshold is '
        'chosen: the k-th highest tuning positive, k = ⌈target·(P+1)⌉), n, n_pos, n_neg, score (what was ranked: '
        'the log-odds of P(positive) from the logits, or P itself for a per_image.csv without logodds columns), '
        'points: [{target_sensitivity, threshold (a probability, σ of threshold_logodds), threshold_logodds, '
        'fold_thresholds (cross-fit: one per fold, as probabilities), tp, fn, tn, fp, sensitivity, specificity, '
        'ppv, npv}], top1}'
    ),
    'isic_metrics': (
        '≥ 3 classes: balanced_accuracy, accuracy, auc / pauc / auc_above per class and their means, ranking each'
        " class's log-odds (see audit/thresholds.py for the two partial-AUC definitions)"
    ),
    'accuracy_by_group': (
        'with `--by`: column → group → {n, accuracy (Wilson 95% CI), too_small (n < min_n)}, largest group first,'
        ' a missing value as the group "<missing>"; the `--by` columns include the image-format columns '
        '(`src_mode`, …)'
    ),
    'by_artifact': (
        'artifact → {with, without: {n, accuracy, sensitivity, specificity}, n_unknown (images whose presence is '
        'unknown, e.g. the detector failed: in neither stratum)} for detector regions with a presence decision'
    ),
    'counterfactual': (
        'with --counterfactual: {method, min_n, regions: artifact → {n, n_absent, n_too_large, n_flips, '
        'flip_rate, mean_delta, by_class}, cost, hidden: [{region, flip_rate, lift, median_frac, flip_allowed, '
        'lift_alarm, median_area, cell_area, shown_artifacts (other artifacts that flip decisions and that the '
        'maps show: filling this region may remove them too), text}] (the shortcuts the maps do not show, '
        '`audit.summary.hidden_shortcuts`), attribution: [{region, contains, n_inside, n_without, median_within, '
        'flips_inside, flips_without (estimates), same_pixels, decision (contained / own effect / undetermined), '
        'text}] (whose flips: `audit.counterfactual.attribute_flips`)}'
    ),
    'gates': (
        'list of {name, value, ci, threshold, passed (true/false/null = not measured), status '
        '(pass/fail/undefined), n, note (why undefined: "too small (n=3)", "not measured", "counterfactual check '
        'not run", ...)}'
    ),
    'verdict': (
        '"pass" (every gate passed; under `gates.undefined: ignore`, every measured gate, at least one), "fail" '
        '(a measured gate failed; under `gates.undefined: fail`, also a gate not measured), "inconclusive" (none '
        'failed, some could not be measured: the default policy), "none" (no gates configured)'
    ),
    'verdict_detail': (
        '{verdict, policy (fail/inconclusive/ignore), n_pass, n_fail, n_undefined, decided_by (the gates that '
        'decided the verdict: the failed ones, or the undefined ones for inconclusive), headline (one sentence '
        "naming them with their values or n, shown in the terminal and under report.html's verdict)}"
    ),
    'timing': (
        'seconds: total_s, model_s, scoring_s, writing_s, counterfactual_s, val_inference_s, discover_s, '
        'sanity_s; decode_in_workers_s and regions_in_workers_s are CPU seconds summed over DataLoader workers '
        '(they overlap the model)'
    ),
    'cache': (
        '{computed, from_cache, note}: how many images ran the model and how many were read from `<out>/cache/`'
    ),
    'sanity': (
        'with --sanity: {method, layer, explainer, n_images, seed, threshold, units, original, steps: [{mode '
        '(cascade/independent), step, unit, randomised, position, spearman, ssim (estimates), n_undefined, '
        'n_nonfinite, region_fracs}], full_randomisation, head_randomisation, gate_value, verdict '
        '(pass/fail/undefined), verdict_text, timing_s}; see `audit/sanity.py`'
    ),
    'discover': (
        'with --discover or `cli.py discover`: {method, layer, n, n_zero_cam, min_n, seed, regions, '
        'median_target_frac, clusters: {per_class, groups}, slices: {n_slices, gamma, pca_components, …, groups},'
        ' ranking: [{kind, id, rank, n, suspicion, reason, flag, prototypes, text}], files}; each group: {kind, '
        'id, pred_class, n, too_small, accuracy, accuracy_rest, gap {value, lo, hi}, mean_confidence, labels, '
        'preds, map {concentration, off_centre, top10_share, peak, png}, evidence, lift, over_represented, '
        'prototypes, suspicion, suspicion_parts, reason, flag (worse / off-target / worse+off-target / null), '
        'rank, text}. See `audit/discover.py` for every formula'
    ),
}


def markdown() -> str:
    """docs/summary_schema.md as a string."""
    out = [f"# `summary.json` schema (schema_version {SCHEMA_VERSION})", "", "<!-- written by "
           "`python -m audit.summary_schema` from audit/summary_schema.py; edit that file, not this one -->", "",
           INTRO, "", "| key | content |", "|---|---|"]
    out += [f"| `{k}` | {v} |" for k, v in KEYS.items()]
    return "\n".join(out) + "\n"


def undocumented(summary: dict) -> list[str]:
    """The top-level keys of a summary that the schema does not document."""
    return sorted(k for k in summary if k not in KEYS)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "docs" / "summary_schema.md"
    path.write_text(markdown(), encoding="utf-8")
    print(f"wrote {path}")
