"""`cli.py compare` / audit.compare: paired statistics with known answers, the checks, the gates, the outputs."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from audit.compare import (ComparisonError, compare_audits, delong_paired, evaluate_compare_gates, mcnemar_exact,
                           operating_predictions, paired_bootstrap, parse_gates, wilcoxon_p)
from audit.errors import ConfigError, UndefinedMetricWarning
from audit.stats import expected_calibration_error
from compare_fixtures import audit_table, set_logodds, write_audit


# ---------------------------------------------------------------------------------------------------------------
# McNemar, paired bootstrap, DeLong, Wilcoxon: known answers

@pytest.mark.parametrize("b,c,p", [(1, 6, 16 / 128), (0, 0, 1.0), (5, 0, 2 / 32), (3, 3, 1.0), (0, 1, 1.0),
                                   (2, 10, 2 * (1 + 12 + 66) / 4096)])
def test_mcnemar_exact_hand_computed(b, c, p):
    # p = 2 · Σ_{k ≤ min(b,c)} C(b+c, k) / 2^(b+c), capped at 1
    assert mcnemar_exact(b, c) == pytest.approx(p, abs=1e-12)


def test_mcnemar_exact_equals_the_binomial_test():
    for b in range(0, 12):
        for c in range(0, 12):
            if b + c:
                ref = sps.binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue
                assert mcnemar_exact(b, c) == pytest.approx(min(1.0, ref), abs=1e-12)
    with pytest.raises(ValueError, match="b, c"):
        mcnemar_exact(-1, 2)
    # large discordant counts (a big test set): no float overflow, the same binomial answer
    assert mcnemar_exact(1000, 1100) == pytest.approx(sps.binomtest(1000, 2100, 0.5).pvalue, rel=1e-6)
    assert mcnemar_exact(600, 400) == pytest.approx(sps.binomtest(400, 1000, 0.5).pvalue, rel=1e-6)


def test_paired_bootstrap_equals_a_slow_loop_over_the_same_resamples():
    rng = np.random.default_rng(3)
    n, n_boot = 40, 500
    a = rng.random(n) < 0.6
    b = rng.random(n) < 0.8
    diff, lo, hi, p = paired_bootstrap((a.astype(float), b.astype(float)), lambda x: x.mean(axis=1), 1,
                                       n_boot=n_boot, seed=11)
    # by hand: the same row indices resample both models' columns
    idx = np.random.default_rng(11).integers(0, n, size=(n_boot, n))
    reps = np.array([b[row].mean() - a[row].mean() for row in idx])
    assert diff == pytest.approx(b.mean() - a.mean())
    assert (lo, hi) == pytest.approx(tuple(np.percentile(reps, [2.5, 97.5])))
    assert p == pytest.approx(max(min(1.0, 2 * min((reps <= 0).mean(), (reps >= 0).mean())), 1 / n_boot))


def test_paired_bootstrap_of_a_constant_shift_has_a_zero_width_ci():
    # the candidate is right on every image the baseline is, plus 6 of 50: every resample keeps the pairing,
    # so the difference is always ≥ 0 (an unpaired bootstrap would give a CI straddling 0)
    a = np.r_[np.ones(30), np.zeros(20)]
    b = a.copy()
    b[30:36] = 1
    diff, lo, hi, _ = paired_bootstrap((a, b), lambda x: x.mean(axis=1), 1, n_boot=400, seed=0)
    assert diff == pytest.approx(6 / 50)
    assert lo > 0 and hi < 0.25


def _delong_slow(y, sa, sb):
    """O(n²) DeLong (1988): placements ψ, their covariances, var(Δ) = S10/m + S01/n."""
    def comps(s):
        X, Y = s[y], s[~y]
        psi = (X[:, None] > Y[None]).astype(float) + 0.5 * (X[:, None] == Y[None])
        return psi.mean(1), psi.mean(0), psi.mean()
    (a10, a01, auc_a), (b10, b01, auc_b) = comps(sa), comps(sb)
    m, k = len(a10), len(a01)
    s10, s01 = np.cov(np.vstack([a10, b10])), np.cov(np.vstack([a01, b01]))
    S = s10 / m + s01 / k
    return auc_a, auc_b, auc_b - auc_a, math.sqrt(S[0, 0] + S[1, 1] - 2 * S[0, 1])


def test_delong_matches_the_slow_definition_and_sklearn():
    rng = np.random.default_rng(0)
    y = rng.random(80) < 0.4
    sa = y + rng.normal(0, 1.0, 80)
    sb = np.round(y + rng.normal(0, 0.7, 80), 1)          # ties
    d = delong_paired(y, sa, sb)
    auc_a, auc_b, diff, se = _delong_slow(y, sa, sb)
    assert d["auc_a"] == pytest.approx(roc_auc_score(y, sa)) == pytest.approx(auc_a)
    assert d["auc_b"] == pytest.approx(roc_auc_score(y, sb)) == pytest.approx(auc_b)
    assert d["diff"] == pytest.approx(diff)
    assert d["se_diff"] == pytest.approx(se)
    assert d["p"] == pytest.approx(2 * sps.norm.sf(abs(diff / se)))
    same = delong_paired(y, sa, sa)
    assert (same["diff"], same["p"]) == (0.0, 1.0)


def test_wilcoxon_known_answers():
    assert wilcoxon_p(np.zeros(12))[:2] == (0.0, 1.0)
    d = np.array([1.0, 2, 3, 4, 5, 6, 7, 8, -0.5, 0])   # the zero is dropped; W = rank of |−0.5| = 1
    w, p, _ = wilcoxon_p(d)
    assert w == 1.0
    assert p == pytest.approx(sps.wilcoxon(d[d != 0]).pvalue)
    assert math.isnan(wilcoxon_p(np.array([np.nan]))[1])


# ---------------------------------------------------------------------------------------------------------------
# two audits

@pytest.fixture
def base_table():
    return audit_table(30, 30, seed=0)


def test_identical_audits_differ_by_zero_with_verdict_no_difference(tmp_path, base_table):
    a = write_audit(tmp_path / "a", base_table, "a", counterfactual=False)
    b = write_audit(tmp_path / "b", base_table, "b")
    c = compare_audits(a, b, gates={"max_sensitivity_drop": 0.02, "max_lift_increase": 0.2})
    keys = [f.key for f in c.figures]
    assert keys == ["accuracy", "sensitivity@0.80", "specificity@0.80", "sensitivity@0.90", "specificity@0.90",
                    "sensitivity@top-1", "specificity@top-1", "auroc", "target_share[lesion]", "lift[ruler]", "ece",
                    "high_conf_error_rate"]
    for f in c.figures:
        assert (f.difference.value, f.difference.lo, f.difference.hi) == (0.0, 0.0, 0.0), f.key
        assert f.p == 1.0, f.key
        assert f.verdict == "no difference", f.key
    assert c.verdict == "pass" and all(g.status == "pass" for g in c.gates)
    assert c.changes["prediction_changed"]["value"] == 0.0 and c.changes["prediction_changed"]["n"] == 60


def test_candidate_missing_five_more_positives_fails_max_sensitivity_drop(tmp_path, base_table):
    cand = set_logodds(base_table, range(5), -3.0)        # 5 of the 30 melanomas now scored below every threshold
    a = write_audit(tmp_path / "a", base_table, "a")
    b = write_audit(tmp_path / "b", cand, "b")
    c = compare_audits(a, b, gates={"max_sensitivity_drop": 0.02})
    for k in ("0.80", "0.90", "top-1"):
        f = c.figure(f"sensitivity@{k}")
        assert f.baseline.value == 1.0 and f.candidate.value == pytest.approx(25 / 30)
        assert f.difference.value == pytest.approx(-5 / 30)
        assert f.discordant == (5, 0) and f.p == pytest.approx(2 / 32)   # McNemar exact: 2 · (½)^5
        assert f.difference.lo < -0.02
        assert c.figure(f"specificity@{k}").difference.value == 0.0
    assert {g.name: g.status for g in c.gates} == {f"max_sensitivity_drop[{k}]": "fail"
                                                   for k in ("0.80", "0.90", "top-1")}
    assert c.verdict == "fail"
    assert c.figure("accuracy").difference.value == pytest.approx(-5 / 60)


def test_gate_passes_only_when_the_ci_bound_clears_the_margin(tmp_path, base_table):
    a = write_audit(tmp_path / "a", base_table, "a")
    c = compare_audits(a, write_audit(tmp_path / "b", set_logodds(base_table, [0, 1], -3.0), "b"))
    f = c.figure("sensitivity@top-1")                     # −2/30 point estimate, the CI's lower bound below it
    lo = f.difference.lo
    assert f.difference.value == pytest.approx(-2 / 30) and lo < -2 / 30
    passed, v_pass = evaluate_compare_gates({"max_sensitivity_drop": -lo + 1e-9}, [f])
    failed, v_fail = evaluate_compare_gates({"max_sensitivity_drop": -lo - 1e-6}, [f])
    assert (passed[0].status, v_pass, failed[0].status, v_fail) == ("pass", "pass", "fail", "fail")
    # a margin the point estimate clears but the bound does not: fails (non-inferiority not shown)
    assert evaluate_compare_gates({"max_sensitivity_drop": 0.07}, [f])[0][0].status == "fail"
    assert failed[0].bound == lo


def test_lift_gate_reads_the_upper_bound_and_undefined_is_inconclusive(tmp_path, base_table):
    cand = base_table.copy()
    cand["frac_ruler"] = cand["frac_ruler"] + 0.05                 # lift + 1.0 on every image
    cand["lift_ruler"] = cand["frac_ruler"] / 0.05
    a = write_audit(tmp_path / "a", base_table, "a")
    c = compare_audits(a, write_audit(tmp_path / "b", cand, "b"),
                       gates=["max_lift_increase=0.2", "max_flip_rate_increase=0.05"])
    f = c.figure("lift[ruler]")
    assert f.difference.lo > 0.2 and f.verdict == "worse" and f.p < 1e-6
    st = {g.name: g.status for g in c.gates}
    assert st == {"max_lift_increase[ruler]": "fail", "max_flip_rate_increase": "undefined"}
    assert c.verdict == "fail"
    _, v = evaluate_compare_gates({"max_flip_rate_increase": 0.05}, c.figures)
    assert v == "inconclusive"


def test_counterfactual_flip_rates_are_compared_when_both_ran_it(tmp_path, base_table):
    ta, tb = base_table.copy(), base_table.copy()
    ta["cf_flip_ruler"] = 0.0
    tb["cf_flip_ruler"] = 0.0
    tb.loc[:11, "cf_flip_ruler"] = 1.0                   # 12 of 60 flip in the candidate only
    c = compare_audits(write_audit(tmp_path / "a", ta, "a", counterfactual=True),
                       write_audit(tmp_path / "b", tb, "b", counterfactual=True))
    f = c.figure("flip_rate[ruler]")
    assert f.difference.value == pytest.approx(12 / 60) and f.discordant == (0, 12)
    assert f.p == pytest.approx(2 * 0.5 ** 12) and f.verdict == "worse"


def test_ece_difference_uses_the_audits_ece(tmp_path, base_table):
    cand = base_table.copy()
    cand["confidence"] = 0.55
    c = compare_audits(write_audit(tmp_path / "a", base_table, "a"), write_audit(tmp_path / "b", cand, "b"))
    f = c.figure("ece")
    ref_a = expected_calibration_error(base_table["confidence"], base_table["correct"], n_boot=0).value
    ref_b = expected_calibration_error(cand["confidence"], cand["correct"], n_boot=0).value
    assert f.baseline.value == pytest.approx(ref_a) and f.candidate.value == pytest.approx(ref_b)
    assert f.difference.value == pytest.approx(ref_b - ref_a)


def test_refuses_different_images_labels_and_regions(tmp_path, base_table):
    a = write_audit(tmp_path / "a", base_table, "a")
    with pytest.raises(ComparisonError, match=r"only in the baseline \(im000, im001\)"):
        compare_audits(a, write_audit(tmp_path / "b", base_table.iloc[2:], "b"))
    other = base_table.copy()
    other.loc[3, "label"] = "benign"
    with pytest.raises(ComparisonError, match=r"different labels for 1 images \(im003"):
        compare_audits(a, write_audit(tmp_path / "c", other, "c"))
    with pytest.raises(ComparisonError, match="different regions"):
        compare_audits(a, write_audit(tmp_path / "d", base_table, "d", kinds={"lesion": "target"}))
    with pytest.raises(ComparisonError, match="regions defined differently \\(ruler\\)"):
        compare_audits(write_audit(tmp_path / "e", base_table, "e", regions={"ruler": {"width": 0.1}}),
                       write_audit(tmp_path / "f", base_table, "f", regions={"ruler": {"width": 0.2}}))


def test_operating_points_are_reproduced_from_cross_fitting(tmp_path, base_table):
    from audit.report.inputs import read_out_dir
    from audit.thresholds import operating_points
    df = set_logodds(base_table, [1, 2], -0.2)
    y = (df["label"] == "melanoma").to_numpy()
    with pytest.warns(UserWarning):
        op = operating_points(df["logodds_melanoma"].to_numpy(), y, targets=(0.9,), seed=0)
    out = write_audit(tmp_path / "a", df, "a", summary_extra={"operating_points": op})
    preds, notes = operating_predictions(read_out_dir(out))
    assert notes == []
    pt = op["points"][0]
    assert int((preds["0.90"] & y).sum()) == pt["tp"] and int((preds["0.90"] & ~y).sum()) == pt["fp"]


def test_parse_gates_refuses_unknown_names_and_bad_margins():
    assert parse_gates(["max_sensitivity_drop=0.02"]) == {"max_sensitivity_drop": 0.02}
    with pytest.raises(ConfigError, match="unknown"):
        parse_gates(["max_sensitivity_dorp=0.02"])
    with pytest.raises(ConfigError, match="margin ≥ 0"):
        parse_gates({"max_lift_increase": -1})
    with pytest.raises(ConfigError, match="NAME=MARGIN"):
        parse_gates(["max_lift_increase"])
    with pytest.raises(ConfigError, match="unknown"):
        parse_gates(["max_ece_increase[x]=0.1"])          # ECE has no operating points or regions


def test_a_gate_can_be_restricted_to_one_point_or_region(tmp_path, base_table):
    cand = set_logodds(base_table, range(5), -3.0)
    c = compare_audits(write_audit(tmp_path / "a", base_table, "a"), write_audit(tmp_path / "b", cand, "b"),
                       gates={"max_sensitivity_drop[0.90]": 0.02, "max_lift_increase[ruler]": 0.2,
                              "max_lift_increase[nowhere]": 0.2})
    assert [(g.name, g.status) for g in c.gates] == [("max_sensitivity_drop[0.90]", "fail"),
                                                     ("max_lift_increase[ruler]", "pass"),
                                                     ("max_lift_increase[nowhere]", "undefined")]
    assert c.gates[2].figure == "lift[nowhere]"


def test_compare_json_is_strict_json_with_the_documented_keys(tmp_path, base_table):
    c = compare_audits(write_audit(tmp_path / "a", base_table, "a"), write_audit(tmp_path / "b", base_table, "b"))
    d = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    assert set(d) == {"schema_version", "baseline", "candidate", "data", "method", "figures", "changes", "gates",
                      "verdict", "gallery", "notes"}
    f = d["figures"][0]
    assert set(f) >= {"key", "group", "label", "direction", "baseline", "candidate", "difference", "test", "p",
                      "verdict"}
    assert d["data"]["n"] == 60 and d["verdict"] == "none"


# ---------------------------------------------------------------------------------------------------------------
# CLI, terminal table, outputs

def _cli(*argv):
    import cli
    return cli.main([str(a) for a in argv])


def test_cli_exit_codes_and_files(tmp_path, base_table, capsys):
    a = write_audit(tmp_path / "a", base_table, "a")
    b = write_audit(tmp_path / "b", set_logodds(base_table, range(5), -3.0), "b")
    out = tmp_path / "cmp"
    assert _cli("compare", a, a, "--out", out, "--gate", "max_sensitivity_drop=0.02", "--quiet") == 0
    assert _cli("compare", a, b, "--out", out, "--gate", "max_sensitivity_drop=0.02", "--quiet") == 1
    d = json.loads((out / "compare.json").read_text())
    assert d["verdict"] == "fail" and {g["status"] for g in d["gates"]} == {"fail"}
    assert (out / "compare.html").is_file() and (out / "pairs.csv").is_file()
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == 60 and (pairs["pred_baseline"] != pairs["pred_candidate"]).sum() == 5
    # the gallery: the 5 positives the candidate now misses, each as a side-by-side picture
    items = d["gallery"]["candidate_wrong"]["items"]
    assert {i["image_id"] for i in items} == {f"im{k:03d}" for k in range(5)}
    assert items[0]["baseline"]["pred"] == "melanoma" and items[0]["candidate"]["pred"] == "benign"
    assert (out / items[0]["path"]).is_file()
    assert d["gallery"]["onto_artifact"]["n_candidates"] == 0            # the ruler's shares did not move
    moved = base_table.copy()
    moved.loc[[7, 9], "frac_ruler"] += [0.10, 0.20]                     # two images gain ruler evidence
    moved.loc[11, "frac_ruler"] += 0.01                                 # one barely: below MIN_MOVE
    m = write_audit(tmp_path / "m", moved, "m")
    assert _cli("compare", a, m, "--out", tmp_path / "cm", "--quiet") == 0
    g = json.loads((tmp_path / "cm" / "compare.json").read_text())["gallery"]["onto_artifact"]
    assert [(i["image_id"], i["region"], i["share_gained"]) for i in g["items"]] == [
        ("im009", "ruler", pytest.approx(0.2)), ("im007", "ruler", pytest.approx(0.1))]
    capsys.readouterr()
    c = tmp_path / "c"
    write_audit(c, base_table.iloc[3:], "c")
    assert _cli("compare", a, c, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "im000, im001, im002" in err
    assert _cli("compare", a, "--out", out) == 2                       # one folder only
    assert _cli("compare", a, b, "--gate", "max_nothing=1") == 2
    assert _cli("compare", a, tmp_path / "nowhere") == 2
    assert "missing" in capsys.readouterr().err


def test_terminal_table_fits_100_columns_and_holds_the_figures(tmp_path, base_table):
    from rich.console import Console

    from audit.compare_report import compare_renderable, fmt_diff, fmt_p
    a = write_audit(tmp_path / "a", base_table, "a")
    b = write_audit(tmp_path / "b", set_logodds(base_table, range(5), -3.0), "b")
    d = compare_audits(a, b, gates={"max_sensitivity_drop": 0.02, "max_lift_increase": 0.2}).to_dict()
    con = Console(width=100, record=True, color_system=None, file=io.StringIO())
    con.print(compare_renderable(d))
    text = con.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100
    from conftest import assert_golden
    assert_golden("compare_table.txt", text)          # the whole table, as tests/golden/compare_table.txt
    f = next(f for f in d["figures"] if f["key"] == "sensitivity@0.80")
    row = next(line for line in text.splitlines() if line.strip().startswith(f["label"]))
    # n | baseline | candidate | difference [CI] | p | verdict: a drop of 5/30 with McNemar p = 2/32 is not
    # significant ("no difference" shown), yet the non-inferiority gate fails on its CI bound
    assert row.split()[2:8] == ["30", "1.000", "0.833", *fmt_diff(f["difference"]).split(" "), "0.06"]
    assert row.rstrip().endswith("no difference")
    assert "FAIL" in text and "Verdict: FAIL" in text
    assert "max_lift_increase[ruler]" in text and "max_sensitivity_drop[top-1]" in text
    assert fmt_p(0.0004) == "<0.001" and fmt_p(None) == "—" and fmt_p(0.1234) == "0.12"
    assert fmt_diff({"value": 0.0, "lo": 0.0, "hi": 0.0, "n": 5}) == "+0.000 [+0.000,+0.000]"


def test_a_too_small_region_does_not_decide_a_spread_gate_but_does_when_named(tmp_path, base_table):
    kinds = {"lesion": "target", "ruler": "artifact", "rare": "artifact"}
    t = base_table.copy()
    t["frac_rare"], t["area_rare"], t["lift_rare"] = np.nan, np.nan, np.nan
    t.loc[:3, ["frac_rare", "area_rare"]] = [0.01, 0.02]                  # on 4 images only
    t["lift_rare"] = t["frac_rare"] / t["area_rare"]
    a = write_audit(tmp_path / "a", t, "a", kinds=kinds)
    b = write_audit(tmp_path / "b", t, "b", kinds=kinds)
    with pytest.warns(UndefinedMetricWarning, match=r"lift\[rare\] \(too small, n=4\)"):
        c = compare_audits(a, b, gates={"max_lift_increase": 0.2})
    st = {g.name: (g.status, g.decides) for g in c.gates}
    assert st == {"max_lift_increase[ruler]": ("pass", True), "max_lift_increase[rare]": ("undefined", False)}
    assert c.verdict == "pass"
    assert c.figure("lift[rare]").verdict == "too small" and c.figure("lift[rare]").difference.n == 4
    with pytest.warns(UndefinedMetricWarning):
        c = compare_audits(a, b, gates={"max_lift_increase[rare]": 0.2})
    assert [(g.status, g.decides) for g in c.gates] == [("undefined", True)] and c.verdict == "inconclusive"


def test_cli_reads_gates_from_a_yaml_file_or_the_presets_compare_section(tmp_path, base_table):
    a = write_audit(tmp_path / "a", base_table, "a")
    b = write_audit(tmp_path / "b", set_logodds(base_table, range(5), -3.0), "b")
    f = tmp_path / "gates.yaml"
    f.write_text("gates:\n  max_sensitivity_drop[0.90]: 0.02\n  max_lift_increase: 0.2\n")
    assert _cli("compare", a, b, "--gates", f, "--out", tmp_path / "o", "--quiet", "--no-report") == 1
    d = json.loads((tmp_path / "o" / "compare.json").read_text())
    assert [(g["name"], g["status"]) for g in d["gates"]] == [("max_sensitivity_drop[0.90]", "fail"),
                                                              ("max_lift_increase[ruler]", "pass")]
    assert not (tmp_path / "o" / "compare.html").exists() and d["gallery"] == {}
    f.write_text("- not a mapping\n")
    assert _cli("compare", a, b, "--gates", f, "--out", tmp_path / "o") == 2
    # a preset's compare.gates (--config), overridden by --gate
    preset = tmp_path / "p.yaml"
    preset.write_text("regions:\n  border: {width: 0.1}\ncompare:\n  gates:\n    max_sensitivity_drop[0.90]: 0.02\n")
    assert _cli("compare", a, b, "--config", preset, "--out", tmp_path / "o", "--quiet", "--no-report") == 1
    d = json.loads((tmp_path / "o" / "compare.json").read_text())
    assert [(g["name"], g["margin"], g["status"]) for g in d["gates"]] == [("max_sensitivity_drop[0.90]", 0.02, "fail")]
    # --gate overrides the preset's margin for the same gate (a 5-of-30 drop is within a 0.5 margin)
    assert _cli("compare", a, b, "--config", preset, "--gate", "max_sensitivity_drop[0.90]=0.5", "--out",
                tmp_path / "o2", "--quiet", "--no-report") == 0
    d = json.loads((tmp_path / "o2" / "compare.json").read_text())
    assert [(g["name"], g["margin"]) for g in d["gates"]] == [("max_sensitivity_drop[0.90]", 0.5)]
    preset.write_text("compare:\n  gates:\n    max_sensitivity_dorp: 0.02\n")
    with pytest.raises(ConfigError, match=r"p.yaml: compare.gates: compare gate 'max_sensitivity_dorp': unknown"):
        from audit.config import load_preset
        load_preset(preset)
    assert _cli("compare", a, b, "--config", preset, "--out", tmp_path / "o3") == 2
