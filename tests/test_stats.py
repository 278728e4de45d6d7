"""Known-answer tests for audit.stats: scipy/sklearn agreement, Wilson by hand, bootstrap behaviour, NaN rules."""
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from audit.errors import UndefinedMetricWarning
from audit.stats import (REGION_STATS, TIDY_COLUMNS, Estimate, _counts, _Sorted, _weighted_auroc,
                         _weighted_pearson, bootstrap_ci, grouped_region_stats, proportion_ci, region_stats,
                         small_text)


def _data(n=200, seed=1, ties=False):
    rng = np.random.default_rng(seed)
    correct = rng.random(n) < 0.7
    frac = np.clip(rng.normal(0.5 + 0.15 * correct, 0.2), 0, 1)
    if ties:
        frac = np.round(frac, 1)
    conf = np.clip(0.5 + 0.4 * frac + rng.normal(0, 0.1, n), 0, 1)
    return frac, correct, conf


def test_tests_match_scipy_and_sklearn():
    frac, correct, conf = _data(ties=True)
    frac[[3, 17, 40]] = np.nan                                   # missing rows are dropped
    r = region_stats(frac, correct, conf, n_boot=200)
    ok = np.isfinite(frac)
    x, c, q = frac[ok], correct[ok], conf[ok]
    mw = sps.mannwhitneyu(x[c], x[~c], alternative="two-sided")
    assert r["mannwhitney_u"].value == mw.statistic and r["mannwhitney_u"].p == mw.pvalue
    for g, m in (("all", np.ones_like(c)), ("correct", c), ("incorrect", ~c)):
        sp = sps.spearmanr(x[m], q[m])
        assert r[f"spearman_conf_{g}"].value == sp.statistic and r[f"spearman_conf_{g}"].p == sp.pvalue
        assert r[f"spearman_conf_{g}"].n == int(m.sum())
        assert r[f"mean_{g}"].value == pytest.approx(x[m].mean()) and r[f"median_{g}"].value == np.median(x[m])
    assert r["auroc_error"].value == roc_auc_score(~c, x)
    assert r["auroc_error"].value == pytest.approx(1 - mw.statistic / (c.sum() * (~c).sum()))
    assert r["mean_all"].n == ok.sum() == len(frac) - 3
    assert r["diff_median"].value == pytest.approx(np.median(x[c]) - np.median(x[~c]))
    assert list(r) == list(REGION_STATS)


@pytest.mark.parametrize("ties", [False, True])
def test_vectorised_resample_statistics_match_reference(ties):
    """Multiplicity-matrix statistics equal scipy/sklearn/numpy on each explicit resample x[idx[r]]."""
    frac, correct, conf = _data(n=61, seed=4, ties=ties)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 61, size=(25, 61))
    W = _counts(idx, 61)
    sx, sq = _Sorted(frac), _Sorted(conf)
    cw = sx.cumweights(W)
    rx = sx.midranks(cw)
    rho = _weighted_pearson(W, rx, sq.midranks(sq.cumweights(W)))
    auc = _weighted_auroc(W, rx, ~correct)
    med = sx.median(cw)
    for r, row in enumerate(idx):
        np.testing.assert_allclose(rx[r][row], sps.rankdata(frac[row]))
        assert rho[r] == pytest.approx(sps.spearmanr(frac[row], conf[row]).statistic, abs=1e-12)
        assert auc[r] == pytest.approx(roc_auc_score(~correct[row], frac[row]), abs=1e-12)
        assert med[r] == np.median(frac[row])


def test_region_ci_equals_explicit_bootstrap():
    """The shared-resample CIs of region_stats equal bootstrap_ci with the same seed (slow reference)."""
    frac, correct, conf = _data(n=80, seed=2)
    r = region_stats(frac, correct, conf, n_boot=300, seed=7)
    lo, hi = bootstrap_ci(frac, lambda a: a.mean(axis=1), n_boot=300, seed=7, vectorized=True)
    assert (r["mean_all"].lo, r["mean_all"].hi) == pytest.approx((lo, hi), abs=1e-12)
    lo, hi = bootstrap_ci(frac, np.median, n_boot=300, seed=7)
    assert (r["median_all"].lo, r["median_all"].hi) == pytest.approx((lo, hi), abs=1e-12)
    lo, hi = bootstrap_ci((frac, conf), lambda a, b: sps.spearmanr(a, b).statistic, n_boot=300, seed=7)
    assert (r["spearman_conf_all"].lo, r["spearman_conf_all"].hi) == pytest.approx((lo, hi), abs=1e-12)
    lo, hi = bootstrap_ci((frac, ~correct), lambda s, e: roc_auc_score(e, s), n_boot=300, seed=7)
    assert (r["auroc_error"].lo, r["auroc_error"].hi) == pytest.approx((lo, hi), abs=1e-12)


def test_wilson_hand_computed():
    e = proportion_ci(8, 10)
    assert e.value == 0.8 and e.n == 10 and not e.too_small
    assert e.lo == pytest.approx(0.4902, abs=5e-5) and e.hi == pytest.approx(0.9433, abs=5e-5)
    # by hand: z = 1.959964, (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    z = 1.959963984540054
    centre, half = (0.8 + z * z / 20) / (1 + z * z / 10), z * math.sqrt(0.016 + z * z / 400) / (1 + z * z / 10)
    assert (e.lo, e.hi) == pytest.approx((centre - half, centre + half), abs=1e-12)
    zero, full = proportion_ci(0, 10), proportion_ci(10, 10)
    assert zero.lo == 0.0 and 0 < zero.hi < 0.35 and full.hi == 1.0 and 0.65 < full.lo < 1


def test_wilson_empty_is_nan_with_warning():
    with pytest.warns(UndefinedMetricWarning):
        e = proportion_ci(0, 0)
    assert math.isnan(e.value) and math.isnan(e.lo) and e.n == 0
    with pytest.raises(ValueError, match="0 <= k <= n"):
        proportion_ci(11, 10)


def test_bootstrap_reproducible_and_contains_estimate():
    x = np.random.default_rng(3).normal(size=150)
    a = bootstrap_ci(x, np.mean, n_boot=500, seed=11)
    b = bootstrap_ci(x, np.mean, n_boot=500, seed=11)
    c = bootstrap_ci(x, np.mean, n_boot=500, seed=12)
    assert a == b and a != c
    assert a[0] < x.mean() < a[1]
    assert a == pytest.approx(bootstrap_ci(x, lambda m: m.mean(axis=1), n_boot=500, seed=11, vectorized=True))
    frac, correct, conf = _data(n=150)
    r1, r2 = region_stats(frac, correct, conf, seed=5), region_stats(frac, correct, conf, seed=5)
    for k in REGION_STATS:
        assert r1[k].to_dict() == pytest.approx(r2[k].to_dict(), nan_ok=True)
        if k != "mannwhitney_u":
            assert r1[k].lo <= r1[k].value <= r1[k].hi, k


def test_ci_width_shrinks_with_n():
    small, large = _data(n=60, seed=9), _data(n=2000, seed=9)
    rs, rl = region_stats(*small), region_stats(*large)
    for k in ("mean_all", "median_all", "spearman_conf_all", "diff_mean", "auroc_error"):
        assert rl[k].hi - rl[k].lo < 0.5 * (rs[k].hi - rs[k].lo), k
    ws = np.diff(bootstrap_ci(np.arange(50.0), np.mean))[0]
    wl = np.diff(bootstrap_ci(np.tile(np.arange(50.0), 20), np.mean))[0]
    assert wl < ws / 3


def test_too_small_groups_flagged_nan():
    frac, correct, conf = _data(n=40, seed=5)
    correct[:] = True
    correct[:4] = False                                          # 4 errors < min_n = 10
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)  # too small is a flag, not an undefined value
        r = region_stats(frac, correct, conf)
    for k in ("mean_incorrect", "median_incorrect", "spearman_conf_incorrect", "diff_mean", "diff_median",
              "mannwhitney_u", "auroc_error"):
        assert r[k].too_small and math.isnan(r[k].value) and math.isnan(r[k].lo), k
    assert r["mean_incorrect"].n == 4
    assert not r["mean_all"].too_small and r["mean_all"].value == pytest.approx(frac.mean())
    assert not r["median_correct"].too_small and r["median_correct"].n == 36


def test_all_nan_input_is_nan_with_warning():
    _, correct, conf = _data(n=30)
    with pytest.warns(UndefinedMetricWarning, match="undefined"):
        r = region_stats(np.full(30, np.nan), correct, conf)
    for k, e in r.items():
        assert math.isnan(e.value) and e.n == 0 and e.too_small, k
    with pytest.warns(UndefinedMetricWarning):
        assert all(map(math.isnan, bootstrap_ci(np.array([]), np.mean)))


def test_constant_fraction_spearman_nan_with_warning():
    _, correct, conf = _data(n=50)
    with pytest.warns(UndefinedMetricWarning, match="spearman_conf_all"):
        r = region_stats(np.zeros(50), correct, conf)
    assert math.isnan(r["spearman_conf_all"].value) and not r["spearman_conf_all"].too_small
    assert r["mean_all"].value == 0.0 and r["auroc_error"].value == 0.5


def test_single_class_auroc_nan_with_warning():
    frac, _, conf = _data(n=50)
    with pytest.warns(UndefinedMetricWarning, match="auroc_error"):
        r = region_stats(frac, np.ones(50, bool), conf)
    assert math.isnan(r["auroc_error"].value)


def test_auroc_perfect_separation():
    correct = np.r_[np.ones(30, bool), np.zeros(20, bool)]
    frac = np.r_[np.linspace(0, 0.4, 30), np.linspace(0.6, 1, 20)]   # errors have the larger fraction
    conf = np.linspace(0.3, 1, 50)
    r = region_stats(frac, correct, conf, n_boot=200)
    assert r["auroc_error"].value == 1.0 and r["auroc_error"].lo == 1.0 and r["auroc_error"].hi == 1.0
    assert region_stats(1 - frac, correct, conf, n_boot=0)["auroc_error"].value == 0.0


def test_input_validation():
    frac, correct, conf = _data(n=20)
    with pytest.raises(ValueError, match="confidence"):
        region_stats(frac, correct, conf * 2)
    with pytest.raises(ValueError, match="differ in length"):
        region_stats(frac[:-1], correct, conf)
    with pytest.raises(ValueError, match="correct"):
        region_stats(frac, np.full(20, 2), conf)


def test_estimate_to_dict():
    d = Estimate(np.float64(0.5), 0.1, 0.9, np.int64(12), p=np.float64(0.03)).to_dict()
    assert d == {"value": 0.5, "lo": 0.1, "hi": 0.9, "n": 12, "too_small": False, "p": 0.03, "note": ""}
    assert type(d["value"]) is float and type(d["n"]) is int


def test_grouped_region_stats_tidy():
    frac, correct, conf = _data(n=120, seed=8)
    df = pd.DataFrame({"lesion": frac, "ruler": np.where(np.arange(120) % 7 == 0, np.nan, 1 - frac),
                       "correct": correct, "confidence": conf,
                       "sex": np.r_[["f"] * 70, ["m"] * 45, [None] * 5]})
    out = grouped_region_stats(df, ["lesion", "ruler"], by="sex", n_boot=100)
    assert tuple(out.columns) == TIDY_COLUMNS
    assert set(out["group"]) == {"(all)", "f", "m", "<missing>"}
    assert len(out) == 2 * 4 * len(REGION_STATS)
    miss = out[(out.group == "<missing>")]
    assert miss.too_small.all() and miss.value.isna().all() and list(miss[miss.stat == "mean_all"].n) == [5, 4]
    f = out[(out.region == "lesion") & (out.group == "f")].set_index("stat")
    ref = region_stats(frac[:70], correct[:70], conf[:70], n_boot=100)
    assert f.loc["auroc_error", "value"] == ref["auroc_error"].value
    assert f.loc["mannwhitney_u", "p"] == ref["mannwhitney_u"].p
    assert math.isnan(f.loc["mean_all", "p"])
    ruler_all = out[(out.region == "ruler") & (out.group == "(all)") & (out.stat == "mean_all")].iloc[0]
    assert ruler_all.n == 120 - len(range(0, 120, 7))
    with pytest.raises(ValueError, match="nope"):
        grouped_region_stats(df, ["lesion"], by="nope")


def test_small_text_names_the_short_group_of_a_correct_vs_wrong_figure():
    frac, conf = np.linspace(0, 1, 40), np.linspace(0.5, 0.9, 40) ** 2
    with pytest.warns(UndefinedMetricWarning, match="diff_median"):   # no errors: the difference is undefined
        all_right = region_stats(frac, np.ones(40, bool), conf, n_boot=0)
    assert all_right["diff_median"].too_small and all_right["diff_median"].n == 40
    assert small_text(all_right["diff_median"].to_dict()) == "no errors"   # not "small n=40"
    three_wrong = region_stats(frac, np.arange(40) >= 3, conf, n_boot=0)
    assert small_text(three_wrong["auroc_error"].to_dict()) == "small: 3 wrong"
    assert small_text(three_wrong["mean_incorrect"].to_dict()) == "small n=3"   # a one-group figure: its n
    four_right = region_stats(frac, np.arange(40) < 4, conf, n_boot=0)
    assert small_text(four_right["diff_mean"].to_dict()) == "small: 4 correct"
    with pytest.warns(UndefinedMetricWarning):
        none_right = region_stats(frac, np.zeros(40, bool), conf, n_boot=0)
    assert small_text(none_right["diff_median"].to_dict()) == "none correct"
    with pytest.warns(UndefinedMetricWarning):
        tidy = grouped_region_stats(pd.DataFrame({"r": frac, "correct": True, "confidence": conf}), ["r"], None,
                                    n_boot=0)
    row = tidy[tidy.stat == "diff_median"].iloc[0].to_dict()
    assert row["n"] == 40 and small_text(row) == "no errors"   # the tidy rows carry the note
    assert small_text({"too_small": True, "n": float("nan")}) == "small n=?"
    with pytest.warns(UndefinedMetricWarning):   # every value missing (all-zero maps): nothing was split
        empty = region_stats(np.full(40, np.nan), np.arange(40) >= 20, conf, n_boot=0)
    assert small_text(empty["diff_median"].to_dict()) == "small n=0"   # not "no errors": 20 were wrong


def test_by_artifact_leaves_unknown_presence_out_of_both_strata():
    """An image whose detector failed (presence NA) is neither 'with' nor 'without' the artifact."""
    import pandas as pd

    from audit.config import AuditConfig
    from audit.summary import _by_artifact
    df = pd.DataFrame({"label": ["a", "b", "a", "b", "a"], "pred": ["a", "a", "a", "b", "b"],
                       "correct": [True, False, True, True, False],
                       "present_ink": pd.array([True, True, None, False, False], dtype="boolean")})
    out = _by_artifact(df, {"ink": "artifact"}, "a", AuditConfig(min_n=1))["ink"]  # min_n=1: strata of 2 not small
    assert out["n_unknown"] == 1 and out["with"]["n"] == 2 and out["without"]["n"] == 2
    assert out["with"]["accuracy"]["value"] == pytest.approx(0.5)        # rows 0, 1
    assert out["without"]["accuracy"]["value"] == pytest.approx(0.5)     # rows 3, 4
    assert out["with"]["sensitivity"]["value"] == pytest.approx(1.0)     # row 0: a predicted a


def test_expected_calibration_error_known_answer_and_agreement_with_the_plot():
    from audit.report.plots import reliability_bins
    from audit.stats import expected_calibration_error
    conf = np.array([0.95, 0.95, 0.65, 0.65, 0.65, 0.65, 1.0] * 2)
    correct = np.array([True, False, True, True, True, False, True] * 2)
    e = expected_calibration_error(conf, correct, n_boot=200, seed=1, min_n=10)
    want = 4 / 7 * abs(0.75 - 0.65) + 3 / 7 * abs(2 / 3 - 2.9 / 3)  # bins 6 and 9, by hand
    assert e.value == pytest.approx(want, rel=1e-12) and e.n == 14 and not e.too_small
    assert e.lo <= e.value <= e.hi
    rng = np.random.default_rng(3)
    for _ in range(5):
        c = rng.uniform(0.3, 1.0, 200)
        k = rng.random(200) < c ** 2
        c[:3] = [0.0, 1.0, np.nan]  # edges and an undefined confidence (left out)
        got = expected_calibration_error(c, k, n_boot=50, min_n=10)
        assert got.value == pytest.approx(reliability_bins(c, k)[1], rel=1e-12) and got.n == 199
    # a perfectly calibrated bin reads 0; too few images: NaN, called small, with a warning
    assert expected_calibration_error(np.full(10, 0.8), np.arange(10) < 8, n_boot=20).value == pytest.approx(0)
    with pytest.warns(UndefinedMetricWarning):
        small = expected_calibration_error(conf[:5], correct[:5], min_n=10)
    assert small.too_small and math.isnan(small.value) and small.n == 5


def test_ece_floor_of_a_calibrated_model_is_the_plug_in_bias():
    """A model whose confidences are its true accuracies still reads ECE > 0 at small n; the floor measures it."""
    from audit.stats import _ece_rows, ece_if_calibrated
    rng = np.random.default_rng(0)
    c = rng.uniform(0.5, 1.0, (2000, 50))
    sim = _ece_rows(c, (rng.random(c.shape) < c).astype(float), 10).mean()
    assert 0.08 < sim < 0.12                     # the docstring's "about 0.10 at n = 50"
    conf = rng.uniform(0.5, 1.0, 50)
    assert 0.06 < ece_if_calibrated(conf, n_sim=400) < 0.14
    assert ece_if_calibrated(np.full(400, 1.0)) == 0.0   # always right at confidence 1: no noise at all
    assert ece_if_calibrated(rng.uniform(0.5, 1, 5000)) < 0.02
    assert math.isnan(ece_if_calibrated(np.array([np.nan])))


def test_one_estimate_formatter_for_every_renderer():
    """#26 §4: terminal, report.html, the scan and compare write estimates through `fmt_estimate`."""
    from audit.compare_report import fmt_diff
    from audit.report.html import fmt_est
    from audit.stats import fmt_estimate
    from audit.terminal import fmt_estimate as term
    e = {"value": 0.6123, "lo": 0.58, "hi": 0.641, "n": 120, "too_small": False}
    assert fmt_estimate(e) == "0.61 [0.58,0.64]" and fmt_est(e) == "0.61 [0.58, 0.64]" and term is fmt_estimate
    assert fmt_estimate(e, pct=True) == "61% [58%,64%]" and fmt_estimate(e, compact=True) == ".61 [.58,.64]"
    assert fmt_diff({"value": 0.125, "lo": 0.03125, "hi": 0.25, "n": 40}) == "+0.125 [+0.031,+0.250]"
    assert fmt_estimate({"value": 0.5, "lo": float("nan"), "hi": None}) == "0.50"      # no CI when undefined
    assert fmt_estimate({"value": float("nan")}) == "n/a" and fmt_estimate(None) == "—"
    assert fmt_estimate({"value": None, "n": 7, "too_small": True}) == "small n=7" == fmt_est({"n": 7, "too_small": True})
    assert fmt_estimate(0.25, digits=3) == "0.250" and fmt_estimate("x") == "n/a"


def test_ece_if_calibrated_in_chunks_equals_one_draw():
    """The simulation runs in row chunks (memory flat in N, #26 benchmark rerun) and draws the same random stream
    as one (n_sim, N) draw: the figure is unchanged, exactly."""
    from audit.stats import _CHUNK_ELEMS, _ece_rows, ece_if_calibrated
    conf = np.random.default_rng(3).uniform(0.5, 1.0, 3000)
    assert _CHUNK_ELEMS // 3000 < 200                                  # several chunks at this N
    c = np.broadcast_to(conf, (200, 3000))
    want = float(_ece_rows(c, (np.random.default_rng(0).random(c.shape) < c).astype(np.float64), 10).mean())
    assert ece_if_calibrated(conf) == want
