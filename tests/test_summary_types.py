"""The typed summary (audit/summary_types.py): one to/from-JSON pair, strict about shape, NaN as null."""
from __future__ import annotations

import json
import math

import pytest
from summary_fixtures import complete

from audit.stats import Estimate
from audit.summary_types import (AuditSummary, Gate, OperatingPoint, RegionSummary, SummaryFormatError, jsonable,
                                 record_types)


def _est(v, lo=None, hi=None, n=50, too_small=False, p=None, note=""):
    return {"value": v, "lo": lo, "hi": hi, "n": n, "too_small": too_small, "p": p, "note": note}


def _summary() -> dict:
    s = complete({
        "schema_version": "2.0",
        "run": {"name": "r", "model": "timm:resnet18", "classes": ["nv", "mel"]},
        "data": {"manifest": "m.csv", "split": "test", "n": 50, "n_skipped": 1, "split_note": "no split column"},
        "cam": {"layer": "layer4", "resolution": [7, 7], "target": "pred"},
        "accuracy": _est(0.8, 0.67, 0.89),
        "regions": {"ruler": {"kind": "artifact", "n_present": 3, "n_missing": 47, "median_area": None,
                              "lift": _est(None, n=3, too_small=True, note="n = 3 < min_n = 10"),
                              "stats": {"median_all": _est(0.1, 0.05, 0.2, p=0.03)},
                              "missing_reasons": {"not detected": 47}}},
        "high_conf_errors": {"threshold": 0.9, "rate": _est(0.02, 0.0, 0.1), "top": [
            {"image_id": "ISIC_1", "label": "mel", "pred": "nv", "confidence": 0.97, "off_target": True}]},
        "operating_points": {"tuning": "validation split", "rule": "k-th", "n": 50, "n_pos": 10, "n_neg": 40,
                             "positive_class": "mel", "score": "log-odds", "points": [
                                 {"target_sensitivity": 0.9, "threshold": None, "fold_thresholds": [],
                                  "threshold_logodds": None}]},
        "gates": [{"name": "max_artifact_lift[ruler]", "value": None, "ci": None, "threshold": 2.0, "passed": None,
                   "status": "undefined", "n": 3, "note": "too small (n=3)"}],
        "verdict": "inconclusive",
        "discover": {"ranking": [{"id": 1, "text": "free-form"}]},
    })
    return json.loads(json.dumps(AuditSummary.from_json(s).to_json()))   # every estimate complete


def test_round_trip_is_exact():
    """(A real audit's summary.json round-trips too: tests/test_cli.py.)"""
    d = _summary()
    s = AuditSummary.from_json(d)
    assert s.to_json() == d
    assert d["regions"]["ruler"]["lift"]["note"] == "n = 3 < min_n = 10" and d["data"]["split_note"]
    assert json.loads(json.dumps(s.to_json(), allow_nan=False)) == d     # strict JSON: no NaN written


def test_types_and_nan():
    s = AuditSummary.from_json(_summary())
    r = s.regions["ruler"]
    assert isinstance(r, RegionSummary) and r.lift.too_small and math.isnan(r.lift.value)
    assert math.isnan(r.median_area)                                      # null number → NaN
    assert r.stats["median_all"] == Estimate(0.1, 0.05, 0.2, 50, p=0.03)
    assert isinstance(s.gates[0], Gate) and s.gates[0].passed is None and math.isnan(s.gates[0].lo)
    pt = s.operating_points.points[0]
    assert isinstance(pt, OperatingPoint) and math.isnan(pt.threshold) and pt.fold_thresholds == []
    assert math.isnan(pt.threshold_logodds)          # present and null: NaN (written back as null, not dropped)
    assert s.data.split_note == "no split column" and s.data.grid_note is None
    assert s.counterfactual is None and "counterfactual" not in s.to_json()  # optional sections: absent when None
    assert s.verdict_headline == "" and s.n_images == 50 and s.classes == ["nv", "mel"]
    assert s.discover == {"ranking": [{"id": 1, "text": "free-form"}]}


def test_bad_shapes_name_the_key():
    d = _summary()
    del d["run"]
    with pytest.raises(SummaryFormatError, match=r"^summary\.json: key 'run' missing$"):
        AuditSummary.from_json(d, "summary.json")
    d = _summary()
    d["regions"]["ruler"]["n_present"] = "three"
    with pytest.raises(SummaryFormatError, match=r"summary\.json\.regions\.ruler\.n_present: expected int"):
        AuditSummary.from_json(d, "summary.json")
    d = _summary()
    d["gates"][0]["name"] = None
    with pytest.raises(SummaryFormatError, match=r"gates\[0\]\.name: expected str, got null"):
        AuditSummary.from_json(d, "summary.json")


def test_unknown_keys_are_dropped_with_a_warning():
    d = _summary()
    d["surprise"] = 1
    with pytest.warns(UserWarning, match="keys not in the schema dropped: surprise"):
        s = AuditSummary.from_json(d)
    assert "surprise" not in s.to_json()


def test_jsonable_is_the_one_converter():
    import numpy as np
    from pathlib import Path
    assert jsonable({"a": np.float32(0.5), "b": float("nan"), "c": np.int64(3), "d": np.bool_(True),
                     "e": Path("x/y"), "f": np.array([1.0, np.inf]), "g": Estimate(1.0)}) == {
        "a": 0.5, "b": None, "c": 3, "d": True, "e": "x/y", "f": [1.0, None],
        "g": {"value": 1.0, "lo": None, "hi": None, "n": 0, "too_small": False, "p": None, "note": ""}}


def test_every_section_is_reachable_for_the_schema():
    keys = dict(record_types())
    assert keys[""] is AuditSummary
    assert {"run", "data", "cam", "regions.<name>", "gates[]", "operating_points.points[]",
            "counterfactual.attribution[]", "counterfactual.hidden[]", "verdict_detail"} <= set(keys)
