"""Per-image scores with exactly known answers, and the sign-off gates."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from summary_fixtures import parse as typed_summary

from audit import gates as _gates
from audit.errors import ConfigError, UndefinedMetricWarning
from audit.scores import region_columns, score_batch


def evaluate_gates(gates: dict, s: dict | None, policy: str | None = None):
    """audit.gates.evaluate_gates on a partial summary dict (typed first), its entries and verdict as JSON."""
    entries, v = _gates.evaluate_gates(gates, None if s is None else typed_summary(s), policy)
    return [g.to_json() for g in entries], v.to_json()


def hidden_shortcuts(s: dict) -> list[dict]:
    """audit.summary.hidden_shortcuts on a partial summary dict, as JSON."""
    from audit.summary import hidden_shortcuts as _hidden
    return [h.to_json() for h in _hidden(typed_summary(s))]


def _m(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_known_fractions_at_input_resolution():
    # h = w = S = 4: the bilinear upsample is the identity, so every number is hand-computable.
    cam = torch.tensor([[[4.0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]])
    lungs = _m([[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])  # area 4/16
    corner = _m([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])  # area 1/16
    out = score_batch(cam, [{"lungs": lungs, "corner": corner}], {"lungs": "target", "corner": "artifact"}, 4)
    assert out["frac_lungs"][0] == pytest.approx(3 / 8)
    assert out["frac_outside_lungs"][0] == pytest.approx(5 / 8)
    assert out["area_lungs"][0] == pytest.approx(0.25)
    assert out["lift_lungs"][0] == pytest.approx(1.5)
    assert out["frac_corner"][0] == pytest.approx(0.5) and out["lift_corner"][0] == pytest.approx(8.0)
    assert out["hit_corner"][0] == 1.0 and out["hit_lungs"][0] == 0.0  # the maximum is the top-left cell
    assert set(out) == set(region_columns({"lungs": "target", "corner": "artifact"}))


def test_hit_tolerance_and_layer_resolution():
    cam = torch.zeros(1, 4, 4)
    cam[0, 0, 0] = 1.0
    m = torch.zeros(4, 4, dtype=torch.bool)
    m[1, 1] = True
    assert score_batch(cam, [{"r": m}], {"r": "artifact"}, 4)["hit_r"][0] == 0.0
    assert score_batch(cam, [{"r": m}], {"r": "artifact"}, 4, tolerance=1)["hit_r"][0] == 1.0
    # 2×2 layer map on a 4×4 input: the mask is area-averaged to 2×2 (the top-left cell is 1/4 covered)
    cam2 = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])
    out = score_batch(cam2, [{"r": m}], {"r": "artifact"}, 4)
    assert out["fraclayer_r"][0] == pytest.approx(1 / 16)
    assert out["frac_r"][0] == pytest.approx(1 / 16)  # uniform map: fraction = area, lift = 1
    assert out["lift_r"][0] == pytest.approx(1.0)


def test_missing_empty_and_zero_maps_are_nan():
    cam = torch.stack([torch.ones(4, 4), torch.ones(4, 4), torch.zeros(4, 4)])
    empty = torch.zeros(4, 4, dtype=torch.bool)
    full = torch.ones(4, 4, dtype=torch.bool)
    with pytest.warns(UndefinedMetricWarning, match="1 of 3 CAMs are all zero"):
        out = score_batch(cam, [{}, {"r": empty}, {"r": full}], {"r": "target"}, 4)
    assert math.isnan(out["frac_r"][0]) and math.isnan(out["area_r"][0])  # missing
    assert math.isnan(out["frac_r"][1]) and out["area_r"][1] == 0.0      # empty
    assert math.isnan(out["frac_r"][2]) and math.isnan(out["hit_r"][2])  # all-zero CAM, never a silent 0


def _summary():
    est = lambda v, lo=None, hi=None, n=100: {"value": v, "lo": lo, "hi": hi, "n": n, "too_small": False}
    return {"regions": {"lungs": {"kind": "target", "stats": {"median_all": est(0.6, 0.55, 0.65)}},
                        "text": {"kind": "artifact", "lift": est(3.2, 2.5, 4.0)}},
            "accuracy": est(0.9), "high_conf_errors": {"rate": est(0.02, 0.01, 0.05)},
            "operating_points": {"points": [{"target_sensitivity": 0.9, "sensitivity": est(0.8, 0.7, 0.9)}]}}


def test_gates_verdicts():
    gates, v = evaluate_gates({"min_median_target_frac": 0.5, "max_high_conf_error_rate": 0.05}, _summary())
    assert v["verdict"] == "pass" and [g["passed"] for g in gates] == [True, True]
    assert [g["status"] for g in gates] == ["pass", "pass"] and v["decided_by"] == []
    assert (v["n_pass"], v["n_fail"], v["n_undefined"]) == (2, 0, 0) and v["headline"]
    assert gates[0]["name"] == "min_median_target_frac[lungs]" and gates[0]["ci"] == [0.55, 0.65]
    gates, v = evaluate_gates({"max_artifact_lift": 2.0, "min_sensitivity_at_0.90": 0.85}, _summary())
    assert v["verdict"] == "fail" and [g["passed"] for g in gates] == [False, False]
    assert v["decided_by"] == ["max_artifact_lift[text]", "min_sensitivity_at_0.90"]
    assert (v["n_pass"], v["n_fail"], v["n_undefined"]) == (0, 2, 0)
    # the headline (its wording: docs/summary_schema.md) names each deciding gate with its value and threshold
    for token in ("max_artifact_lift[text]", "3.2", "min_sensitivity_at_0.90", "0.8", "0.85"):
        assert token in v["headline"], token
    # a gate that was not measured is undefined: by default the verdict is inconclusive, not fail
    gates, v = evaluate_gates({"max_counterfactual_flip_rate": 0.1}, _summary())
    assert v["verdict"] == "inconclusive" and gates[0]["passed"] is None and "not run" in gates[0]["note"]
    assert gates[0]["status"] == "undefined"
    entries, v = evaluate_gates({}, _summary())
    assert entries == [] and {k: x for k, x in v.items() if k != "headline"} == {
        "policy": "inconclusive", "n_pass": 0, "n_fail": 0, "n_undefined": 0, "verdict": "none", "decided_by": []}
    with pytest.raises(ConfigError, match="gates.max_lift: unknown gate"):
        evaluate_gates({"max_lift": 2}, _summary())
    with pytest.raises(ConfigError, match="expected a number"):
        evaluate_gates({"min_accuracy": "high"}, _summary())


def _rare_artifact_summary():
    """The newcomer's HAM10000 case (#26): every measured gate passes; two artifact regions are present in too few
    images for a lift (n = 0 and n = 3 < min_n), so their gates are undefined."""
    s = _summary()
    small = lambda n: {"value": None, "lo": None, "hi": None, "n": n, "too_small": True}  # noqa: E731
    s["regions"] = {"lungs": s["regions"]["lungs"],
                    "border": {"kind": "artifact", "lift": {"value": 0.56, "lo": 0.5, "hi": 0.6, "n": 100}},
                    "ruler": {"kind": "artifact", "lift": small(0)}, "ink": {"kind": "artifact", "lift": small(3)}}
    return s


@pytest.mark.parametrize("policy,verdict", [("inconclusive", "inconclusive"), ("fail", "fail"), ("ignore", "pass")])
def test_undefined_gate_policy_decides_the_verdict_and_the_headline_names_the_gates(policy, verdict):
    gates = {"min_median_target_frac": 0.5, "max_artifact_lift": 2.0, "undefined": policy}
    entries, v = evaluate_gates(gates, _rare_artifact_summary())
    assert [g["status"] for g in entries] == ["pass", "pass", "undefined", "undefined"]
    assert (v["verdict"], v["policy"], v["n_pass"], v["n_fail"], v["n_undefined"]) == (verdict, policy, 2, 0, 2)
    assert "max_artifact_lift[ruler] (n=0)" in v["headline"] and "max_artifact_lift[ink] (n=3)" in v["headline"]
    assert f"gates.undefined: {policy}" in v["headline"]          # the policy that decided, named
    if policy == "ignore":
        assert v["decided_by"] == []
    else:
        assert v["decided_by"] == ["max_artifact_lift[ruler]", "max_artifact_lift[ink]"]
    # the argument overrides the preset's key (CLI > preset)
    assert evaluate_gates(gates, _rare_artifact_summary(), policy="fail")[1]["verdict"] == "fail"


def test_a_failed_gate_decides_fail_whatever_the_policy_and_nothing_measured_is_never_a_pass():
    gates = {"max_artifact_lift": 0.5, "undefined": "ignore"}
    _, v = evaluate_gates(gates, _rare_artifact_summary())
    assert v["verdict"] == "fail" and v["decided_by"] == ["max_artifact_lift[border]"]
    _, v = evaluate_gates({"max_counterfactual_flip_rate": 0.1}, _summary(), policy="ignore")
    assert v["verdict"] == "inconclusive" and (v["n_pass"], v["n_fail"], v["n_undefined"]) == (0, 0, 1)
    assert v["decided_by"] == ["max_counterfactual_flip_rate"]
    with pytest.raises(ConfigError, match="gates.undefined: expected one of fail, inconclusive, ignore, got 'maybe'"):
        evaluate_gates({"undefined": "maybe"}, {})


@pytest.mark.parametrize("gates,tokens", [      # the key, the range expected, the value given
    ({"max_artifact_lift": -1}, ["gates.max_artifact_lift", "≥ 0", "-1.0"]),
    ({"min_sensitivity_at_0.90": 1.5}, ["gates.min_sensitivity_at_0.90", "[0, 1]", "1.5"]),
    ({"min_median_target_frac": float("nan")}, ["gates.min_median_target_frac", "[0, 1]", "nan"]),
    ({"max_sanity_correlation": -2}, ["gates.max_sanity_correlation", "[-1, 1]", "-2"]),
    ({"min_sensitivity_at_high": 0.8}, ["gates.min_sensitivity_at_high", "(0, 1)", "high"]),
    ({"min_sensitivity_at_1.2": 0.8}, ["gates.min_sensitivity_at_1.2", "(0, 1)", "1.2"]),
])
def test_gate_thresholds_a_model_could_never_meet_or_miss_are_refused(gates, tokens):
    with pytest.raises(ConfigError) as ei:
        evaluate_gates(gates, {})
    msg = str(ei.value)
    assert "\n" not in msg and all(t in msg for t in tokens), (msg, tokens)
    evaluate_gates({"max_artifact_lift": 0, "min_accuracy": 1, "max_sanity_correlation": -1}, {})  # edges allowed


def test_by_artifact_from_metadata_flag():
    import pandas as pd

    from audit.config import AuditConfig
    from audit.summary import _by_artifact
    # 4 melanomas with ink (3 found), 6 nevi without ink (1 called melanoma)
    df = pd.DataFrame({"label": ["mel"] * 4 + ["nv"] * 6, "pred": ["mel"] * 3 + ["nv"] + ["mel"] + ["nv"] * 5,
                       "ink": [1] * 4 + [0] * 6})
    df["correct"] = df["label"] == df["pred"]
    out = _by_artifact(df, {}, "mel", AuditConfig(by=["ink"], min_n=2))
    w, wo = out["ink"]["with"], out["ink"]["without"]
    assert w["n"] == 4 and w["sensitivity"]["value"] == 0.75 and w["specificity"]["value"] is None
    assert wo["n"] == 6 and wo["specificity"]["value"] == 5 / 6 and wo["accuracy"]["value"] == 5 / 6


def test_audit_and_scan_share_one_with_without_analysis_and_its_too_small_rule():
    """#26 §4: the audit's by_artifact and the scan's model-by-artifact were two copies, one without a too-small
    rule. Now one (`audit.association.model_by_artifact`): the same numbers, and a stratum below min_n is small."""
    import pandas as pd

    from audit.association import model_by_artifact
    from audit.config import AuditConfig
    from audit.summary import _by_artifact
    from audit.summary_types import jsonable as clean_json
    rng = np.random.default_rng(0)
    n = 40
    lab = np.where(np.arange(n) < 16, "mel", "nv")
    df = pd.DataFrame({"label": lab, "pred": np.where(rng.random(n) < 0.8, lab, np.where(lab == "mel", "nv", "mel")),
                       "p_mel": rng.random(n), "present_ink": pd.array([True] * 6 + [False] * 33 + [None], "boolean")})
    df["correct"] = df["label"] == df["pred"]
    cfg = AuditConfig(min_n=10, n_boot=50)
    audit = _by_artifact(df, {"ink": "artifact"}, "mel", cfg)["ink"]
    scan = clean_json(model_by_artifact(df, ["ink"], "mel", 10, 0.05, 50, 0))["ink"]
    assert audit["n_unknown"] == 1 and {k: v for k, v in audit.items() if k != "n_unknown"} == scan
    assert audit["with"]["n"] == 6 and audit["with"]["accuracy"]["too_small"] and audit["with"]["accuracy"]["value"] is None
    k = int(df["correct"][6:39].sum())
    assert audit["without"]["accuracy"]["value"] == pytest.approx(k / 33)


def test_off_target_rate_counts_only_images_where_the_flag_is_defined():
    """An image whose map is all zero has no fraction and no lift: it is neither on nor off target, so it leaves
    the rate's n instead of counting as 'on target'."""
    import pandas as pd

    from audit.config import AuditConfig
    from audit.preprocess import InputSpec
    from audit.run import RunConfig
    from audit.summary import add_flags, build_summary, off_target_defined

    nan = float("nan")
    df = pd.DataFrame({"image_id": list("abcde"), "label": ["x", "y", "x", "y", "x"], "pred": ["x", "y", "y", "y", "x"],
                       "correct": [True, True, False, True, True], "confidence": [0.9, 0.8, 0.7, 0.6, 0.95],
                       "frac_lungs": [0.2, 0.8, nan, 0.7, nan], "lift_lungs": [0.5, 1.5, nan, 1.4, nan],
                       "frac_text": [0.05, 0.4, nan, 0.05, nan], "lift_text": [1.0, 5.0, nan, 1.0, nan],
                       "p_x": [0.9, 0.2, 0.3, 0.4, 0.95], "p_y": [0.1, 0.8, 0.7, 0.6, 0.05]})
    for r in ("lungs", "text"):  # the other per-region columns the summary reads (values immaterial here)
        df[f"area_{r}"], df[f"fraclayer_{r}"], df[f"hit_{r}"] = 0.3, df[f"frac_{r}"], 1.0
    kinds = {"lungs": "target", "text": "artifact"}
    cfg = AuditConfig()
    df = add_flags(df, kinds, cfg)
    assert df["flag_off_target"].tolist() == [True, True, False, False, False]
    assert off_target_defined(df, kinds).tolist() == [True, True, False, True, False]
    run = RunConfig(model_name="resnet18", source="torchvision", classes=["x", "y"], input=InputSpec())
    s = build_summary(df, kinds, run, cfg, split="test", manifest="m.csv", layer="layer4", cam_hw=(7, 7),
                      n_skipped=0, timing={})
    assert s.off_target.rate.n == 3 and s.off_target.n_undefined == 2
    assert s.off_target.rate.value == pytest.approx(2 / 3)


@pytest.mark.parametrize("text,tokens", [       # the key, what was expected, the value given
    ("audit:\n  n_boot: many\n", ["audit.n_boot", "integer", "many"]),
    ("audit:\n  counterfactual: yes please\n", ["audit.counterfactual", "true or false", "yes please"]),
    ("audit:\n  high_conf: [0.9]\n", ["audit.high_conf", "number", "0.9"]),
    ("audit:\n  by: site\n", ["audit.by", "list", "site"]),
    ("audit:\n  limit: 2.5\n", ["audit.limit", "integer", "2.5"]),
    ("audit:\n  sensitivities: [0.9, 90]\n", ["audit.sensitivities", "(0, 1]", "90"]),
])
def test_preset_audit_values_are_type_checked(tmp_path, text, tokens):
    from audit.config import resolve_config
    p = tmp_path / "p.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        resolve_config({}, p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: ") and "\n" not in msg and all(t in msg for t in tokens), (msg, tokens)


def test_preset_audit_values_that_are_fine():
    import tempfile
    from pathlib import Path

    from audit.config import resolve_config
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "p.yaml"
        p.write_text("audit:\n  high_conf: 1\n  positive: 1\n  n_boot: 50\n  limit: null\n  sensitivities: [0.9, 1]\n")
        cfg = resolve_config({}, p)
    assert cfg.high_conf == 1.0 and isinstance(cfg.high_conf, float) and cfg.positive == "1"
    assert cfg.n_boot == 50 and cfg.limit is None and cfg.sensitivities == [0.9, 1]


def _cf_summary(gates=None):
    """A summary whose counterfactual check and maps disagree on `patches` only (numbers of the EfficientNet
    shortcut audit at 3×3): `border` flips some decisions but holds more of the evidence than it flips;
    `text` flips every decision and its maps show it (lift 5)."""
    est = lambda v, lo, hi, n=360, small=False: {"value": v, "lo": lo, "hi": hi, "n": n, "too_small": small}  # noqa
    return {"cam": {"resolution": [3, 3], "finer_layer": {"layer": "blocks.4", "resolution": [6, 6]}},
            "gates": gates or [],
            "regions": {"patches": {"median_area": 0.039, "lift": est(0.83, 0.82, 0.84),
                                    "stats": {"median_all": est(0.033, 0.032, 0.034)}},
                        "border": {"median_area": 0.30, "lift": est(0.86, 0.85, 0.87),
                                   "stats": {"median_all": est(0.26, 0.25, 0.27)}},
                        "text": {"median_area": 0.02, "lift": est(5.0, 4.0, 6.0),
                                 "stats": {"median_all": est(0.10, 0.08, 0.12)}}},
            "counterfactual": {"regions": {"patches": {"n": 360, "flip_rate": est(0.997, 0.984, 1.0)},
                                           "border": {"n": 722, "flip_rate": est(0.16, 0.13, 0.18, 722)},
                                           "text": {"n": 360, "flip_rate": est(1.0, 0.99, 1.0)}}}}


def test_hidden_shortcut_is_a_region_that_flips_decisions_the_maps_do_not_show():
    (h,) = hidden_shortcuts(_cf_summary())
    assert h["region"] == "patches" and h["flip_allowed"] == 0.10 and h["lift_alarm"] == 3.0
    assert h["cell_area"] == pytest.approx(1 / 9)
    assert h["flip_rate"]["lo"] == 0.984 and h["lift"]["hi"] == 0.84 and h["median_frac"]["hi"] == 0.034
    # smaller than one 3×3 map cell: the text says so and names the finer layer (cam.finer_layer)
    assert h["median_area"] == 0.039 < h["cell_area"]
    for datum in ("100% [98%, 100%]", "0.83× [0.82, 0.84]", "11%", "3.9%", "blocks.4", "6×6"):
        assert datum in h["text"], datum
    # text flips every decision and the maps show it: filling patches may have removed it too (if inside)
    assert h["shown_artifacts"] == ["text"] and "5.00×" in h["text"]
    # the gates' thresholds decide: a flip gate at 0.99 (CI lower bound 0.984 is not above it) or a lift alarm
    # at 0.5 (the lift's upper bound 0.84 is not below it) leaves nothing to report
    g = lambda name, t: {"name": name, "threshold": t}  # noqa: E731
    assert hidden_shortcuts(_cf_summary([g("max_counterfactual_flip_rate[patches]", 0.99)])) == []
    assert hidden_shortcuts(_cf_summary([g("max_artifact_lift[patches]", 0.5)])) == []
    # a flip gate on another region does not apply to this one
    assert [h["region"] for h in hidden_shortcuts(_cf_summary([g("max_counterfactual_flip_rate[text]", 0.99)]))] \
        == ["patches"]
    small = _cf_summary()
    small["counterfactual"]["regions"]["patches"]["flip_rate"]["too_small"] = True
    assert hidden_shortcuts(small) == []
    big = _cf_summary()                      # a region larger than a map cell: no resolution sentence
    big["regions"]["patches"]["median_area"] = 0.2
    (hb,) = hidden_shortcuts(big)
    assert hb["median_area"] > hb["cell_area"] and "blocks.4" not in hb["text"]
    assert hidden_shortcuts({"regions": {}, "cam": {}}) == []   # no counterfactual check


def test_confidence_rho_ranks_the_top1_log_odds_where_float32_confidence_ties_at_one():
    """12 images all at confidence 1.0 in float32: ρ(frac, confidence) was undefined (constant input); ranked by
    the top-1 log-odds the fraction that rises with them reads ρ = 1 (and ρ = −1 when it falls)."""
    import pandas as pd

    from audit.config import AuditConfig
    from audit.preprocess import InputSpec
    from audit.run import RunConfig
    from audit.summary import add_flags, build_summary, confidence_ranks
    n = 12
    lo = np.linspace(20.0, 40.0, n)
    df = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "label": ["x"] * n, "pred": ["x"] * n,
                       "correct": [True] * 6 + [False] * 6, "confidence": 1.0,
                       "logodds_x": lo, "logodds_y": -lo, "p_x": 1.0, "p_y": 0.0,
                       "frac_lungs": np.linspace(0.1, 0.9, n), "frac_text": np.linspace(0.5, 0.05, n)})
    df.loc[3, ["pred", "logodds_y", "logodds_x"]] = ["y", 25.0, -25.0]   # a pred-y row: ranked by logodds_y
    for r in ("lungs", "text"):
        df[f"area_{r}"], df[f"fraclayer_{r}"], df[f"hit_{r}"] = 0.3, df[f"frac_{r}"], 1.0
        df[f"lift_{r}"] = df[f"frac_{r}"] / 0.3
    ranks = confidence_ranks(df)
    expect = np.argsort(np.argsort(np.r_[lo[:3], 25.0, lo[4:]]))
    np.testing.assert_allclose(ranks, (expect + 0.5) / n)
    assert np.isnan(confidence_ranks(df.assign(confidence=np.nan).drop(columns=["logodds_x", "logodds_y"]))).all()
    df.loc[3, "pred"] = "x"
    df.loc[3, "logodds_x"] = lo[3]
    kinds = {"lungs": "target", "text": "artifact"}
    run = RunConfig(model_name="resnet18", source="torchvision", classes=["x", "y"], input=InputSpec())
    cfg = AuditConfig(n_boot=50)
    s = build_summary(add_flags(df, kinds, cfg), kinds, run, cfg, split="test", manifest="m.csv",
                      layer="layer4", cam_hw=(7, 7), n_skipped=0, timing={})
    assert s.regions["lungs"].stats["spearman_conf_all"].value == pytest.approx(1.0)
    assert s.regions["text"].stats["spearman_conf_all"].value == pytest.approx(-1.0)
    s_old = build_summary(add_flags(df.drop(columns=["logodds_x", "logodds_y"]), kinds, cfg), kinds, run, cfg,
                          split="test", manifest="m.csv", layer="layer4", cam_hw=(7, 7), n_skipped=0,
                          timing={})
    assert math.isnan(s_old.regions["lungs"].stats["spearman_conf_all"].value)   # ties only: undefined


def test_by_group_leaves_out_groups_a_region_never_occurs_in():
    import pandas as pd

    from audit.config import AuditConfig
    from audit.preprocess import InputSpec
    from audit.run import RunConfig
    from audit.summary import add_flags, build_summary
    n = 24
    lab = np.array(["x"] * 12 + ["y"] * 12)
    df = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "label": lab, "pred": lab,
                       "correct": [True, False] * 12, "confidence": np.linspace(0.5, 0.99, n),
                       "p_x": 0.5, "p_y": 0.5, "frac_lungs": np.linspace(0.2, 0.8, n),
                       "frac_text": np.where(lab == "x", 0.1, np.nan)})    # text never found on a y image
    for r in ("lungs", "text"):
        df[f"area_{r}"], df[f"fraclayer_{r}"], df[f"hit_{r}"] = 0.3, df[f"frac_{r}"], 1.0
        df[f"lift_{r}"] = df[f"frac_{r}"] / 0.3
    kinds = {"lungs": "target", "text": "artifact"}
    run = RunConfig(model_name="resnet18", source="torchvision", classes=["x", "y"], input=InputSpec())
    cfg = AuditConfig(n_boot=20, min_n=5)
    s = build_summary(add_flags(df, kinds, cfg), kinds, run, cfg, split="test", manifest="m.csv",
                      layer="layer4", cam_hw=(7, 7), n_skipped=0, timing={})
    rows = {(r["region"], r["group"], r["stat"]) for r in s.by_group.rows}
    assert ("frac_text", "x", "median_all") in rows and ("frac_lungs", "y", "median_all") in rows
    assert not any(reg == "frac_text" and g == "y" for reg, g, _ in rows)
    assert all(r["n"] > 0 for r in s.by_group.rows)


def test_within_is_the_share_of_one_artifacts_pixels_inside_another():
    cam = torch.ones(2, 4, 4)
    border = _m([[1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]])           # 12 pixels
    marker = _m([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])           # 4 pixels, 3 on the border
    empty = torch.zeros(4, 4, dtype=torch.bool)
    kinds = {"lungs": "target", "border": "artifact", "marker": "artifact"}
    out = score_batch(cam, [{"border": border, "marker": marker, "lungs": ~border},
                            {"border": border, "marker": empty}], kinds, 4)
    assert out["within_marker__border"][0] == pytest.approx(3 / 4)
    assert out["within_border__marker"][0] == pytest.approx(3 / 12)
    assert math.isnan(out["within_marker__border"][1])          # no marker: its share inside is undefined
    assert out["within_border__marker"][1] == 0.0
    assert "within_lungs__border" not in out and set(out) == set(region_columns(kinds))


def _cf_frame(n_in=20, n_without=20, flips_in=18, flips_without=1, extra_partial=5):
    """Images tested for `border`: the marker lies inside it (within 1.0) in n_in, is absent in n_without, and
    is only 40% inside in extra_partial (left out of both groups); a missing mask (NaN area) counts as absent, as
    in the counterfactual check."""
    rows = []
    for i in range(n_in):
        rows.append({"cf_flip_border": float(i < flips_in), "within_text__border": 1.0, "area_text": 0.01,
                     "within_border__text": 0.04, "cf_flip_text": 1.0, "area_border": 0.3})
    for i in range(n_without):
        rows.append({"cf_flip_border": float(i < flips_without), "within_text__border": float("nan"),
                     "area_text": 0.0 if i % 2 else float("nan"), "within_border__text": 0.0,
                     "cf_flip_text": float("nan"), "area_border": 0.3})
    for i in range(extra_partial):
        rows.append({"cf_flip_border": 1.0, "within_text__border": 0.4, "area_text": 0.01,
                     "within_border__text": 0.02, "cf_flip_text": 1.0, "area_border": 0.3})
    return pd.DataFrame(rows)


def test_flips_of_a_region_are_given_to_the_artifact_inside_it():
    from audit.counterfactual import attribute_flips
    from audit.stats import proportion_ci
    (a,) = attribute_flips(_cf_frame(), ["border", "text"], min_n=10)
    assert (a["region"], a["contains"], a["decision"]) == ("border", "text", "contained")
    assert (a["n_inside"], a["n_without"]) == (20, 20)              # the 5 partly inside are in neither group
    w = proportion_ci(18, 20)
    assert (a["flips_inside"]["value"], a["flips_inside"]["lo"]) == (0.9, pytest.approx(w.lo))
    assert a["flips_without"]["value"] == 0.05 and not a["same_pixels"]
    assert a["median_within"] == 1.0 and "90% [" in a["text"] and "100%" in a["text"]   # its numbers, shown
    # the border flips as often without the marker: an effect of its own
    (b,) = attribute_flips(_cf_frame(flips_without=17), ["border", "text"], min_n=10)
    assert b["decision"] == "own effect" and b["flips_without"]["value"] == 17 / 20
    # too few images without the marker to tell
    (c,) = attribute_flips(_cf_frame(n_without=4), ["border", "text"], min_n=10)
    assert c["decision"] == "undetermined" and c["flips_without"]["too_small"] and c["n_without"] == 4
    assert attribute_flips(_cf_frame(n_in=0, extra_partial=0), ["border", "text"]) == []


def test_a_region_whose_flips_are_contained_is_not_a_hidden_shortcut():
    s = _cf_summary()
    (h,) = hidden_shortcuts(s)
    r = h["region"]
    s["counterfactual"]["attribution"] = [{"region": r, "contains": "text", "decision": "contained",
                                           "text": f"{r}'s flips belong to text"}]
    assert hidden_shortcuts(s) == []
    s["counterfactual"]["attribution"][0]["decision"] = "own effect"
    assert [x["region"] for x in hidden_shortcuts(s)] == [r]


def test_summary_schema_doc_is_generated_from_the_code():
    """docs/summary_schema.md is written by `python -m audit.summary_schema`: the committed file is current."""
    from pathlib import Path

    from audit.summary_schema import markdown, undocumented
    from audit.summary_types import SCHEMA_VERSION
    doc = Path(__file__).resolve().parents[1] / "docs" / "summary_schema.md"
    assert doc.read_text(encoding="utf-8") == markdown(), "run: python -m audit.summary_schema"
    md = markdown()
    assert f"schema_version {SCHEMA_VERSION}" in md and "| `verdict_detail` | VerdictDetail or null *(optional)* |" in md
    assert "## `gates[]` (Gate)" in md and "## `regions.<name>` (RegionSummary)" in md   # every typed section
    assert undocumented({"verdict": "pass", "surprise": 1}) == ["surprise"]
