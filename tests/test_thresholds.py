"""Known-answer tests for audit.thresholds: threshold tuning, operating points, ISIC metrics."""
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from audit.errors import UndefinedMetricWarning
from audit.stats import _counts, proportion_ci
from audit.thresholds import (TUNING_CROSS_FIT, TUNING_VALIDATION, _roc_areas_weighted, auc_above_sensitivity,
                              balanced_accuracy, isic_metrics, operating_points, partial_auc_above_sensitivity,
                              per_class_auc, tune_threshold)


def _binary(n=300, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.25
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.5 * y)))
    return (np.round(p, 1) if ties else p), y


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("target", [0.5, 0.7, 0.8, 0.9, 0.95, 1.0])
def test_tuned_threshold_is_largest_reaching_target(target, ties):
    p, y = _binary(ties=ties, seed=int(target * 100))
    t = tune_threshold(p, y, target)
    sens = lambda thr: (p[y] >= thr).mean()
    assert sens(t) >= target - 1e-12
    candidates = np.unique(np.r_[p, p + 1e-9, 2.0])             # brute force: every distinct cut
    best = max(c for c in candidates if sens(c) >= target - 1e-12)
    assert t == best


def test_tune_threshold_exact_fraction_and_no_positives():
    p = np.linspace(0.05, 0.95, 10)
    y = np.ones(10, bool)
    assert tune_threshold(p, y, 0.7) == p[3]                     # 7 of 10 positives kept (0.7·10 = 7.000…01)
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(tune_threshold(p, np.zeros(10, bool), 0.9))
    with pytest.raises(ValueError, match="target_sensitivity"):
        tune_threshold(p, y, 0)


def test_operating_point_counts_and_wilson_by_hand():
    # validation: positives at 0.9, 0.8, 0.6, 0.3 → target 0.6, held-out rank k = ⌈0.6·(4+1)⌉ = 3 → t = 0.6
    pv, yv = [0.9, 0.8, 0.6, 0.3, 0.7, 0.2], [1, 1, 1, 1, 0, 0]
    pa = np.array([0.95, 0.65, 0.55, 0.10, 0.70, 0.61, 0.30, 0.59, 0.05, 0.2])
    ya = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    top1 = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0], bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # validation path: no warning
        r = operating_points(pa, ya, pv, yv, targets=(0.6,), y_pred_top1_pos=top1)
    assert r["tuning"] == TUNING_VALIDATION and r["warning"] is None
    assert (r["n"], r["n_pos"], r["n_neg"]) == (10, 4, 6)
    pt = r["points"][0]
    assert pt["threshold"] == 0.6 and pt["target_sensitivity"] == 0.6
    # predicted positive (p >= 0.6): 0.95, 0.65 (pos); 0.70, 0.61 (neg)
    assert (pt["tp"], pt["fn"], pt["tn"], pt["fp"]) == (2, 2, 4, 2)
    assert pt["sensitivity"]["value"] == 0.5 and pt["specificity"]["value"] == pytest.approx(4 / 6)
    assert pt["ppv"]["value"] == 0.5 and pt["npv"]["value"] == pytest.approx(4 / 6)
    # Wilson by hand for 2/4: z = 1.96, centre (0.5 + z²/8)/(1 + z²/4) = 0.5, half z·sqrt(1/16 + z²/64)/(1 + z²/4)
    z = 1.959963984540054
    half = z * math.sqrt(0.25 / 4 + z * z / 64) / (1 + z * z / 4)
    assert (pt["sensitivity"]["lo"], pt["sensitivity"]["hi"]) == pytest.approx((0.5 - half, 0.5 + half))
    assert pt["sensitivity"]["lo"] == pytest.approx(0.1500, abs=5e-5)
    assert pt["specificity"]["n"] == 6 and pt["specificity"]["lo"] == proportion_ci(4, 6).lo
    t1 = r["top1"]
    assert (t1["tp"], t1["fn"], t1["tn"], t1["fp"]) == (1, 3, 5, 1)
    assert t1["sensitivity"]["value"] == 0.25 and t1["specificity"]["value"] == pytest.approx(5 / 6)


def test_cross_fit_path_warns_and_is_marked():
    p, y = _binary(n=400, seed=3)
    with pytest.warns(UserWarning, match="no validation split"):
        r = operating_points(p, y, targets=(0.8, 0.9), seed=1)
    assert r["tuning"] == TUNING_CROSS_FIT == "cross-fit on audited split (no validation split)"
    assert "no validation split" in r["warning"]
    for pt in r["points"]:
        assert len(pt["fold_thresholds"]) == 5
        assert pt["threshold"] == np.median(pt["fold_thresholds"])
        assert pt["tp"] + pt["fn"] == y.sum() and pt["tn"] + pt["fp"] == (~y).sum()
        assert abs(pt["sensitivity"]["value"] - pt["target_sensitivity"]) < 0.1
    with pytest.warns(UserWarning):
        again = operating_points(p, y, targets=(0.8, 0.9), seed=1)
    assert again == r


def test_cross_fit_single_positive_is_nan():
    p = np.linspace(0, 1, 20)
    y = np.zeros(20, bool)
    y[-1] = True
    with pytest.warns(UserWarning) as rec:
        r = operating_points(p, y, targets=(0.9,))
    assert any(issubclass(w.category, UndefinedMetricWarning) for w in rec)
    assert math.isnan(r["points"][0]["threshold"]) and r["points"][0]["tp"] is None
    assert math.isnan(r["points"][0]["sensitivity"]["value"])


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_balanced_accuracy_equals_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        yt, yp = rng.integers(0, 7, 200), rng.integers(0, 7, 200)
        yt[yt == 3] = 4                                           # class 3 absent from the truth
        assert balanced_accuracy(yt, yp) == pytest.approx(balanced_accuracy_score(yt, yp), abs=1e-15)
    assert balanced_accuracy(["a", "b", "b"], ["a", "b", "a"]) == 0.75


def test_per_class_auc_equals_sklearn_ovr():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4))
    logits[np.arange(300), y] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    out = per_class_auc(y, probs, ["a", "b", "c", "d"])
    ovr = roc_auc_score(y, probs, multi_class="ovr", average=None)
    assert list(out.values()) == pytest.approx(list(ovr), abs=1e-15)
    for c, name in enumerate("abcd"):
        assert out[name] == roc_auc_score(y == c, probs[:, c])
    y[y == 2] = 1
    with pytest.warns(UndefinedMetricWarning, match="'c'"):
        out = per_class_auc(y, probs, ["a", "b", "c", "d"])
    assert math.isnan(out["c"]) and not math.isnan(out["a"])


def test_partial_auc_known_values():
    y = np.r_[np.ones(5, bool), np.zeros(5, bool)]
    # perfect classifier: the whole band TPR in [0.8, 1] over FPR in [0, 1]
    assert partial_auc_above_sensitivity(y, np.r_[np.ones(5), np.zeros(5)]) == pytest.approx(0.2)
    # chance diagonal (all scores tied): ∫_{0.8}^{1} (f − 0.8) df = 0.02
    assert partial_auc_above_sensitivity(y, np.full(10, 0.5)) == pytest.approx(0.02)
    # hand-built step ROC: order +,+,−,+,−,− → (0,1/3),(0,2/3),(1/3,2/3),(1/3,1),(2/3,1),(1,1);
    # TPR = 2/3 < 0.8 for FPR < 1/3, then TPR = 1: area = (1 − 1/3)·0.2 = 2/15
    yb = np.array([1, 1, 0, 1, 0, 0], bool)
    s = np.array([6, 5, 4, 3, 2, 1.0])
    assert partial_auc_above_sensitivity(yb, s) == pytest.approx(2 / 15)
    assert partial_auc_above_sensitivity(yb, s, min_tpr=0.5) == pytest.approx(1 / 3 * (2 / 3 - 0.5) + 2 / 3 * 0.5)
    assert partial_auc_above_sensitivity(yb, s, min_tpr=0.0) == pytest.approx(roc_auc_score(yb, s))
    # worst classifier: TPR stays 0 until FPR = 1
    assert partial_auc_above_sensitivity(y, np.r_[np.zeros(5), np.ones(5)]) == 0.0
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(partial_auc_above_sensitivity(np.ones(4, bool), np.arange(4.0)))


def test_partial_auc_equals_mcclish_undone_on_flipped_problem():
    """The ISIC 2024 route: roc_auc_score(max_fpr = 1 − min_tpr) on (1 − y, −s), McClish standardisation undone."""
    for seed in range(3):
        p, y = _binary(n=150, seed=seed, ties=seed == 1)
        mf = 0.2
        scaled = roc_auc_score(~y, -p, max_fpr=mf)
        raw = 0.5 * mf ** 2 + (mf - 0.5 * mf ** 2) / 0.5 * (scaled - 0.5)
        assert partial_auc_above_sensitivity(y, p) == pytest.approx(raw, abs=1e-12)


def test_auc_above_sensitivity_known_values():
    """isic-challenge-scoring "AUC, Sens > 80%": area under the whole curve where TPR >= 0.8."""
    y = np.r_[np.ones(5, bool), np.zeros(5, bool)]
    assert auc_above_sensitivity(y, np.r_[np.ones(5), np.zeros(5)]) == pytest.approx(1.0)
    assert auc_above_sensitivity(y, np.full(10, 0.5)) == pytest.approx(0.18)      # ∫_{0.8}^{1} f df
    yb, s = np.array([1, 1, 0, 1, 0, 0], bool), np.array([6, 5, 4, 3, 2, 1.0])
    assert auc_above_sensitivity(yb, s) == pytest.approx(2 / 3)                    # TPR = 1 on FPR in [1/3, 1]
    assert auc_above_sensitivity(y, np.r_[np.zeros(5), np.ones(5)]) == 0.0
    from sklearn.metrics import roc_curve
    for seed in range(4):                                          # = band + 0.8·(1 − FPR*) on random curves
        p, yy = _binary(n=100, seed=seed, ties=seed % 2 == 1)
        fpr, tpr, _ = roc_curve(yy, p, drop_intermediate=False)
        j = np.searchsorted(tpr, 0.8)                              # first vertex with TPR >= 0.8
        f_star = fpr[j - 1] + (0.8 - tpr[j - 1]) / (tpr[j] - tpr[j - 1]) * (fpr[j] - fpr[j - 1])
        assert auc_above_sensitivity(yy, p) == pytest.approx(
            partial_auc_above_sensitivity(yy, p) + 0.8 * (1 - f_star), abs=1e-12)
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(auc_above_sensitivity(np.zeros(4, bool), np.arange(4.0)))


def _slow_pauc(y, s, m):
    """Reference: ∫ max(ROC(f) − m, 0) df on a fine grid of the piecewise-linear ROC."""
    from sklearn.metrics import roc_curve
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    f = np.linspace(0, 1, 200001)
    t = np.maximum(np.interp(f, fpr, tpr) - m, 0)   # vertical segments: interp takes the top, area-neutral
    return float(np.sum((t[1:] + t[:-1]) / 2 * np.diff(f)))


@pytest.mark.parametrize("seed", range(4))
def test_partial_auc_matches_direct_integral_and_resample_version(seed):
    p, y = _binary(n=120, seed=seed, ties=seed % 2 == 1)
    for m in (0.8, 0.9, 0.5):
        v = partial_auc_above_sensitivity(y, p, m)
        assert v == pytest.approx(_slow_pauc(y, p, m), abs=2e-5)
        assert v == pytest.approx(_roc_areas_weighted(np.ones((1, len(y))), y, p, [m])[0][0], abs=1e-12)
    idx = np.random.default_rng(seed).integers(0, len(y), size=(10, len(y)))
    W = _counts(idx, len(y))
    a0, a8 = _roc_areas_weighted(W, y, p, [0.0, 0.8])
    ab8, ab9 = _roc_areas_weighted(W, y, p, [0.8, 0.9], above=True)
    for r, row in enumerate(idx):
        assert a0[r] == pytest.approx(roc_auc_score(y[row], p[row]), abs=1e-12)
        assert a8[r] == pytest.approx(partial_auc_above_sensitivity(y[row], p[row]), abs=1e-12)
        assert ab8[r] == pytest.approx(auc_above_sensitivity(y[row], p[row]), abs=1e-12)
        assert ab9[r] == pytest.approx(auc_above_sensitivity(y[row], p[row], 0.9), abs=1e-12)


def test_isic_metrics_bundle():
    rng = np.random.default_rng(2)
    classes = ["MEL", "NV", "BCC", "DF"]
    y = rng.choice(4, size=400, p=[0.2, 0.6, 0.18, 0.02])
    logits = rng.normal(size=(400, 4))
    logits[np.arange(400), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y[:5] = 3                                                     # DF: 5 + a few, below min_n = 10 or near it
    n_df = int((y == 3).sum())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        r = isic_metrics(y, probs, classes, n_boot=200, min_n=max(10, n_df + 1))
    ba = r["balanced_accuracy"]
    assert ba["value"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    assert ba["lo"] < ba["value"] < ba["hi"] and ba["n"] == 400
    assert r["accuracy"]["value"] == pytest.approx((probs.argmax(1) == y).mean())
    auc = per_class_auc(y, probs, classes)
    for c, name in enumerate(classes[:3]):
        assert r["auc"][name]["value"] == auc[name]
        assert r["auc"][name]["lo"] < auc[name] < r["auc"][name]["hi"]
        assert r["pauc"][name]["value"] == partial_auc_above_sensitivity(y == c, probs[:, c])
        assert 0 <= r["pauc"][name]["value"] <= 0.2
        assert r["auc_above"][name]["value"] == auc_above_sensitivity(y == c, probs[:, c])
        assert r["auc_above"][name]["lo"] <= r["auc_above"][name]["value"] <= r["auc_above"][name]["hi"]
    assert r["auc"]["DF"]["too_small"] and math.isnan(r["auc"]["DF"]["value"])
    assert r["auc_mean"]["value"] == pytest.approx(np.mean([auc[c] for c in classes[:3]]))
    assert "DF" in r["auc_mean"]["note"]
    assert r["n_per_class"]["DF"] == n_df
    with pytest.warns(UndefinedMetricWarning, match="DF"):
        again = isic_metrics(y, probs, classes, n_boot=200, min_n=max(10, n_df + 1))
    assert str(again) == str(r)                                   # seeded: identical, NaNs included


@pytest.mark.parametrize("t,text", [(0.5, "0.500"), (0.21, "0.210"), (0.9996, "1 − 4.0e-04"), (0.99996, "1 − 4.0e-05"),
                                    (1.0, "1.000"), (0.0004, "4.0e-04"), (0.0, "0.000"), (None, "n/a"),
                                    (float("nan"), "n/a")])
def test_threshold_text_keeps_thresholds_near_one_apart(t, text):
    """Thresholds tuned on a saturated model (0.9996 vs 0.99996) must not both print as 1.000."""
    from audit.thresholds import fmt_threshold
    assert fmt_threshold(t) == text


@pytest.mark.parametrize("logodds,text", [(20.0, "1 − 2.1e-09"), (165.4, "1 − 1.5e-72"), (-20.0, "2.1e-09"),
                                          (0.0, "0.500"), (None, "1.000"), (float("nan"), "1.000")])
def test_threshold_text_from_log_odds_where_the_probability_has_rounded_to_one(logodds, text):
    """σ(20) and σ(165) are both 1.0 in float64 or nearly: the log-odds keep them apart (1 − σ(t) = σ(−t))."""
    from audit.thresholds import fmt_threshold, prob_from_logodds
    p = prob_from_logodds(logodds) if logodds is not None and math.isfinite(logodds) else 1.0
    assert fmt_threshold(p, logodds) == text


def test_operating_points_tuned_on_log_odds_where_probabilities_tie_at_one():
    """Every positive and three negatives have P = 1.0 in float32: on probabilities the 0.5 and 0.65 targets get
    one threshold (1.0) and one result; on the log-odds (`logodds_mel`) they are tuned apart (hand-computed)."""
    import pandas as pd
    from audit.config import AuditConfig
    from audit.preprocess import InputSpec
    from audit.run import RunConfig
    from audit.summary import _operating_points
    lo_pos, lo_neg = [45.0, 35.0, 25.0, 15.0], [38.0, 22.0, 18.0, -3.0, -5.0]
    lo = np.array(lo_pos + lo_neg)
    df = pd.DataFrame({"label": ["mel"] * 4 + ["nv"] * 5, "pred": ["mel"] * 7 + ["nv"] * 2,
                       "p_mel": np.where(lo > 17, 1.0, 1 / (1 + np.exp(-lo))), "logodds_mel": lo})
    df["logodds_nv"] = -df["logodds_mel"]
    run = RunConfig(model_name="resnet18", source="torchvision", classes=["mel", "nv"], input=InputSpec())
    cfg = AuditConfig(sensitivities=[0.5, 0.65])
    val_lo = np.array([50.0, 40.0, 30.0, 20.0, 10.0, 35.0, -2.0])      # 5 positives, then 2 negatives
    val = (np.array(["mel"] * 5 + ["nv"] * 2), np.column_stack([val_lo, -val_lo]))
    res = _operating_points(df, run, "mel", val, cfg)
    (p60, p80) = res["points"]
    # 5 positives, held-out rank k = ⌈target·(5+1)⌉: target 0.5 → k = 3 → t = 30; target 0.65 → k = 4 → t = 20
    assert p60["threshold_logodds"] == 30.0 and p80["threshold_logodds"] == 20.0
    assert p80["threshold"] == pytest.approx(1 / (1 + math.exp(-20.0)), rel=1e-15)
    assert (p60["tp"], p60["fp"], p60["fn"], p60["tn"]) == (2, 1, 2, 4)   # ≥ 30: 45, 35 | 38
    assert (p80["tp"], p80["fp"], p80["fn"], p80["tn"]) == (3, 2, 1, 3)   # ≥ 20: 45, 35, 25 | 38, 22
    assert res["score"].startswith("log-odds")
    # the same table without the log-odds columns: both targets collapse onto P ≥ 1.0
    old = _operating_points(df.drop(columns=["logodds_mel", "logodds_nv"]), run, "mel", None, cfg)
    assert old["points"][0]["tp"] == old["points"][1]["tp"] and "threshold_logodds" not in old["points"][0]
    assert old["score"].startswith("P(positive)")


def test_held_out_rank_reaches_the_target_on_new_positives_of_a_perfect_score():
    """#26: a perfectly separating score read 76% sensitivity at the 0.80 target. Leave one positive out of
    P = 21 (scores 21 > 20 > … > 1, every negative below): it is predicted positive iff its rank among all 21 is
    ≤ k, the rank used on the other 20. Held-out rank k = ⌈0.8·21⌉ = 17 → 17/21 ≥ 0.8; the in-sample rank
    ⌈0.8·20⌉ = 16 gave 16/21 = 0.762."""
    pos = np.arange(21, 0, -1, dtype=float)
    neg = -np.arange(1, 31, dtype=float)
    hits = {False: 0, True: 0}
    for held_out in (False, True):
        for i in range(21):
            others = np.r_[np.delete(pos, i), neg]
            y = np.r_[np.ones(20, bool), np.zeros(30, bool)]
            hits[held_out] += pos[i] >= tune_threshold(others, y, 0.8, held_out=held_out)
    assert hits == {False: 16, True: 17}
    # the rank by hand: k = ⌈0.8·(20+1)⌉ = 17 of the 20 tuning positives 20…1 → t = 4; capped at P for 1.0
    y = np.ones(20, bool)
    assert tune_threshold(np.arange(20, 0, -1.0), y, 0.8, held_out=True) == 4.0
    assert tune_threshold(np.arange(20, 0, -1.0), y, 1.0, held_out=True) == 1.0


def test_cross_fitted_perfect_score_reaches_the_target_on_average():
    """Cross-fitted on a perfectly separating score (20 positives, 80 negatives, 100 shuffles): the mean
    sensitivity is at or above each target (it was 0.763 at 0.80, 0.880 at 0.90 with the in-sample rank), and
    specificity is 1. 0.95 needs ⌈0.95·17⌉ = 17 of 16 tuning positives: capped, so only 16/17 there."""
    rng = np.random.default_rng(0)
    sens = {0.8: [], 0.9: []}
    for seed in range(100):
        y = np.r_[np.ones(20, bool), np.zeros(80, bool)]
        p = np.where(y, rng.uniform(2, 5, 100), rng.uniform(-5, -2, 100))
        with pytest.warns(UserWarning, match="5-fold stratified; each fold"):
            r = operating_points(p, y, targets=(0.8, 0.9), seed=seed)
        assert r["folds"] == 5 and r["rule"].startswith("each threshold is the k-th highest")
        for pt in r["points"]:
            sens[pt["target_sensitivity"]].append(pt["sensitivity"]["value"])
            assert pt["specificity"]["value"] == 1.0
    assert np.mean(sens[0.8]) >= 0.8 and np.mean(sens[0.9]) >= 0.9


@pytest.mark.parametrize("n_pos, words", [(0, "no positives of class mel among the 30 audited images"),
                                          (1, "1 positive of class mel among the 30 audited images")])
def test_no_positives_no_fold_count_but_a_note(n_pos, words):
    """#26: with no positives the cross-fit note read '0-fold stratified'. Now: NaN thresholds and rates, an
    UndefinedMetricWarning, and a note naming the class and n."""
    p = np.linspace(-3, 3, 30)
    y = np.zeros(30, bool)
    y[:n_pos] = True
    with pytest.warns(UndefinedMetricWarning, match="thresholds cannot be tuned") as rec:
        r = operating_points(p, y, targets=(0.8, 0.9), positive_name="mel")
    assert not any("fold" in str(w.message) and "cross-fitting needs" not in str(w.message) for w in rec)
    assert words in r["warning"] and r["warning"].endswith("thresholds cannot be tuned")
    assert "0-fold" not in r["warning"] and r["folds"] is None and r["tuning"] == TUNING_CROSS_FIT
    assert len(r["points"]) == 2
    for pt in r["points"]:
        assert math.isnan(pt["threshold"]) and pt["tp"] is None and math.isnan(pt["sensitivity"]["value"])


def test_fewer_positives_than_folds_says_so():
    p = np.linspace(-3, 3, 30)
    y = np.zeros(30, bool)
    y[-3:] = True
    with pytest.warns(UserWarning, match=r"3-fold stratified, not 5: only 3 positives of class mel"):
        r = operating_points(p, y, targets=(0.8,), positive_name="mel")
    assert r["folds"] == 3 and len(r["points"][0]["fold_thresholds"]) == 3


def test_validation_split_without_positives_is_undefined():
    with pytest.warns(UndefinedMetricWarning, match="no positives of class mel among the 4 validation images"):
        r = operating_points([0.9, 0.1], [True, False], [0.5, 0.4, 0.3, 0.2], [False] * 4, targets=(0.8,),
                             positive_name="mel")
    assert r["tuning"] == TUNING_VALIDATION and math.isnan(r["points"][0]["threshold"])
