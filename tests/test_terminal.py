"""The terminal summary rendered to a fixed-width, colourless console, checked as text."""
from __future__ import annotations

from rich.console import Console

from summary_fixtures import parse as typed_summary

from audit import terminal


def print_summary(s: dict, out_dir=None, console=None):
    """The terminal's print_summary of a partial summary dict (typed first: tests state only what they check)."""
    terminal.print_summary(typed_summary(s), out_dir, console)


def summary_renderable(s: dict, out_dir=None):
    return terminal.summary_renderable(typed_summary(s), out_dir)


def _line(text: str, head: str) -> str:
    """The one line of a rendering that starts with `head` (its wording: tests/golden/terminal_summary.txt)."""
    (line,) = [ln for ln in text.splitlines() if ln.startswith(head)]
    return line


def _files(line: str) -> list[str]:
    """The files a "Files: <dir>/ (a, b, c)" line lists."""
    return line.rstrip().rsplit("(", 1)[1].rstrip(")").split(", ")


def _est(v, lo=None, hi=None, n=100, too_small=False):
    return {"value": v, "lo": lo, "hi": hi, "n": n, "too_small": too_small}


SUMMARY = {
    "run": {"name": "run_x", "model": "torchvision:resnet18"},
    "data": {"manifest": "m.csv", "split": "test", "n": 120, "n_skipped": 3},
    "cam": {"layer": "layer4", "resolution": [7, 7], "target": "pred"},
    "accuracy": _est(0.8, 0.72, 0.86, 120),
    "regions": {
        "lesion": {"kind": "target", "n_present": 120, "median_lift": 1.3, "lift": _est(1.3, 1.1, 1.5, 120),
                   "stats": {"median_all": _est(0.61, 0.58, 0.64), "diff_median": _est(0.12, 0.05, 0.2),
                             "spearman_conf_all": _est(0.3, 0.1, 0.45), "auroc_error": _est(0.31, 0.2, 0.42)}},
        "ruler": {"kind": "artifact", "n_present": 7, "median_lift": 4.2, "lift": _est(4.2, 3.0, 5.5, 7),
                  "stats": {"median_all": _est(None, n=7, too_small=True), "diff_median": _est(None, n=7, too_small=True),
                            "spearman_conf_all": _est(None, n=7, too_small=True),
                            "auroc_error": _est(None, n=7, too_small=True)}},
    },
    "high_conf_errors": {"threshold": 0.9, "rate": _est(0.05, 0.02, 0.1), "top": [
        {"image_id": "ISIC_1", "label": "mel", "pred": "nv", "confidence": 0.97, "off_target": True,
         "flips_without": ["ruler"]}]},
    "calibration": {"ece": _est(0.083, 0.061, 0.11, 120), "ece_if_calibrated": 0.041, "n_bins": 10},
    "operating_points": {"positive_class": "mel", "tuning": "validation split", "n": 120, "n_pos": 25, "points": [
        {"target_sensitivity": 0.9, "threshold": 0.21, "sensitivity": _est(0.88, 0.7, 0.96, 25),
         "specificity": _est(0.7, 0.6, 0.78, 95), "ppv": _est(0.44, 0.3, 0.58, 50), "npv": _est(0.96, 0.9, 0.99, 70)}]},
    "gates": [{"name": "max_artifact_lift[ruler]", "value": 4.2, "ci": [3.0, 5.5], "threshold": 2.0, "passed": False},
              {"name": "min_median_target_frac[lesion]", "value": 0.61, "ci": [0.58, 0.64], "threshold": 0.5,
               "passed": True}],
    "verdict": "fail",
}


def test_summary_text_at_100_columns():
    con = Console(width=100, color_system=None, force_terminal=False, record=True)
    print_summary(SUMMARY, "reports/run_x", con)
    text = con.export_text()
    assert all(len(line) <= 100 for line in text.splitlines())
    assert "\x1b[" not in text  # no colour codes when there is no terminal
    assert "n=120" in text and "skipped 3" in text and "accuracy 80% [72%,86%]" in text
    flat = " ".join(text.split())
    assert "ECE 0.08 [0.06,0.11]" in flat and "~0.04" in flat   # the ECE and a calibrated model's at this n
    assert ".61 [.58,.64]" in text             # the lesion's median fraction with its CI, on one line
    assert ".96 [.90,.99]" in text             # NPV not truncated
    assert "small n=7" in text                 # a small group is called small, not given a number
    assert "max_artifact_lift[ruler]" in text  # markup-like names shown verbatim
    assert "Sign-off gates: FAIL" in text and "FAIL" in text and "pass" in text
    assert "4.200 [3.000, 5.500]" in text and "0.610 [0.580, 0.640]" in text  # as in report.html: 3 decimals
    ops = _line(text, "Operating points")
    assert all(d in ops for d in ("mel", "validation split", "120", "25"))   # class, tuning, n, positives
    assert " 0.210 " in text                   # the tuned threshold
    assert "ISIC_1" in text and "reports/run_x/" in text
    assert "flips without" in text and next(ln for ln in text.splitlines() if "ISIC_1" in ln).rstrip(" │").endswith("ruler")


def test_files_line_lists_only_what_was_written(tmp_path):
    """--no-report writes no report.html, gallery or plots: the summary must not point to them."""
    for f in ("per_image.csv", "summary.json"):
        (tmp_path / f).write_text("x")
    (tmp_path / "plots").mkdir()
    con = Console(width=200, color_system=None, force_terminal=False, record=True)
    print_summary(SUMMARY, str(tmp_path), con)
    line = _line(con.export_text(), "Files:")
    assert f"{tmp_path}/" in line and _files(line) == ["plots/", "per_image.csv", "summary.json"]


def test_discovered_groups_in_words_with_prototypes(tmp_path):
    disc = {"ranking": [
        {"kind": "slice", "id": 3, "rank": 1, "n": 41, "suspicion": 0.62, "reason": "gap", "flag": "worse",
         "prototypes": ["ISIC_7", "ISIC_9"], "text": "slice 3: 41 images, accuracy 0.32 vs 0.81 elsewhere"},
        {"kind": "cluster", "id": 0, "rank": 1, "n": 30, "suspicion": 0.2, "reason": "location", "flag": None,
         "prototypes": ["ISIC_2"], "text": "cluster 0 (predicted mel): 30 images"}] + [
        {"kind": "slice", "id": i, "rank": i, "n": 12, "suspicion": 0.1, "reason": "gap", "flag": None,
         "prototypes": [], "text": f"slice {i}"} for i in range(4, 7)]}
    out = tmp_path / "r"   # slice 3's overlays were rendered; cluster 0 has its mean map only (--no-report)
    (out / "gallery" / "discover_slice_3").mkdir(parents=True)
    (out / "discover").mkdir()
    (out / "discover" / "cluster_0.png").write_bytes(b"")
    con = Console(width=100, color_system=None, force_terminal=False, record=True)
    print_summary({**SUMMARY, "discover": disc}, str(out), con)
    text = con.export_text()
    assert all(len(line) <= 100 for line in text.splitlines())
    assert "accuracy 0.32 vs 0.81 elsewhere" in text and "prototypes: ISIC_7, ISIC_9" in text
    flat = "".join(text.split())
    assert "overlays:" + "".join(str(out).split()) + "/gallery/discover_slice_3/" in flat
    assert "meanmap:" + "".join(str(out).split()) + "/discover/cluster_0.png" in flat
    assert "cluster 0 (predicted mel)" in text and "discover_cluster_0/" not in flat
    assert "slice 5" not in text and "2 more ranked groups" in text   # top 3 shown, the rest counted
    con2 = Console(width=100, color_system=None, force_terminal=False, record=True)
    print_summary(SUMMARY, "reports/run_x", con2)
    assert "Discovered groups" not in con2.export_text()


def test_all_zero_maps_are_called_out_and_off_target_names_its_n():
    s = {**SUMMARY, "data": {**SUMMARY["data"], "n_zero_cam": 120},
         "off_target": {"rate": _est(None, n=0, too_small=True), "n_undefined": 120, "rule": "r"}}
    con = Console(width=200, color_system=None, force_terminal=False, record=True)
    print_summary(s, None, con)
    text = con.export_text()
    assert "All-zero Grad-CAM maps: 120 of 120" in text and "choose another --layer" in text
    assert "off-target evidence: small n=0 of 0" in text
    s = {**SUMMARY, "data": {**SUMMARY["data"], "n_zero_cam": 3},
         "off_target": {"rate": _est(0.25, 0.18, 0.33, n=117), "n_undefined": 3, "rule": "r"}}
    con = Console(width=200, color_system=None, force_terminal=False, record=True)
    print_summary(s, None, con)
    text = con.export_text()
    assert "All-zero Grad-CAM maps: 3 of 120" in text and "choose another" not in text
    assert "off-target evidence: 25% [18%,33%] of 117" in text


def test_missing_regions_say_why_and_how_many():
    """Why a region's n falls short of the audit's: a lost lung mask is called out (yellow), an artifact that is
    simply absent is not; both give counts out of the audited images."""
    import numpy as np
    import pandas as pd

    from audit.summary import missing_reasons
    df = pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e"],
        "cam_sum": [1.0, 1.0, 0.0, 1.0, 1.0],
        "region_notes": ["lungs: x/a_mask.png: mask file not found; ink: heuristic: not detected",
                         "lungs: y/b.png: mask file not found; ink: heuristic: not detected",
                         "lungs: file; ink: heuristic",
                         "lungs: d.png: mask is empty (all zero); ink: heuristic: not detected",
                         "lungs: file; ink: heuristic"]})
    lungs_missing = np.array([True, True, True, True, False])
    assert missing_reasons(df, "lungs", lungs_missing) == {"mask file not found": 2, "all-zero map": 1,
                                                           "mask is empty (all zero)": 1}
    assert missing_reasons(df, "lungs", lungs_missing, top=1) == {"mask file not found": 2, "other": 2}
    assert missing_reasons(df, "ink", np.array([True, True, False, True, False])) == {"not detected": 3}
    regions = {
        "lungs": {**SUMMARY["regions"]["lesion"], "n_present": 1, "n_missing": 4,
                  "missing_reasons": missing_reasons(df, "lungs", lungs_missing)},
        "ink": {**SUMMARY["regions"]["ruler"], "n_present": 2, "n_missing": 3,
                "missing_reasons": {"not detected": 3}}}
    con = Console(width=300, color_system=None, force_terminal=False, record=True)
    print_summary({**SUMMARY, "regions": regions}, None, con)
    text = con.export_text()
    line = _line(text, "Undefined fractions")   # each region's n missing of n audited, and the reasons' counts
    for datum in ("lungs 4 of 5", "mask file not found: 2", "all-zero map: 1", "ink 3 of 5", "not detected: 3"):
        assert datum in line, datum
    assert line.index("lungs") < line.index("mask file not found") < line.index("ink")


def test_missing_regions_line_is_loud_only_for_lost_masks():
    from rich.text import Text


    def style(regions):
        parts = summary_renderable({**SUMMARY, "regions": regions}).renderables
        line = [p for p in parts if isinstance(p, Text) and p.plain.startswith("Undefined fractions")]
        return line[0].style if line else None

    art = {**SUMMARY["regions"]["ruler"], "n_missing": 5}
    absent = {"ink": {**art, "missing_reasons": {"not detected": 4, "no region": 1}},
              "patch": {**art, "missing_reasons": {"no mask file for this image (column 'artifact_mask' empty)": 5}},
              "text": {**art, "missing_reasons": {"no pixel with value [127]": 3}}}
    assert style(absent) == "dim"                                       # artifacts simply not there
    assert style({**absent, "ruler": {**art, "missing_reasons": {"mask file not found": 5}}}) == "yellow"
    assert style({"lesion": {**SUMMARY["regions"]["lesion"], "n_missing": 1,
                             "missing_reasons": {"not detected": 1}}}) == "yellow"   # a target region lost
    assert style(SUMMARY["regions"]) is None


def test_region_table_fits_100_columns_without_cutting_cis():
    """Negative estimates with negative CI bounds in every column, and the longest built-in region name: the
    table fits a 100-column terminal with no cell cut short ("…")."""
    neg = _est(-0.72, -0.76, -0.66, 722)
    regions = {name: {"kind": kind, "n_present": 722, "median_lift": 2.3, "lift": _est(2.3, 2.2, 2.4, 722),
                      "stats": {"median_all": _est(0.31, 0.29, 0.33, 722), "diff_median": _est(-0.04, -0.05, -0.01),
                                "spearman_conf_all": neg, "auroc_error": _est(0.56, 0.45, 0.65)}}
               for name, kind in (("lesion", "target"), ("dark_corners", "artifact"), ("gel_border", "artifact"))}
    con = Console(width=100, color_system=None, force_terminal=False, record=True)
    print_summary({**SUMMARY, "regions": regions}, None, con)
    table = con.export_text().split("Where the evidence lies", 1)[1].split("High-confidence", 1)[0]
    assert "…" not in table and "-.72 [-.76,-.66]" in table and "-.04 [-.05,-.01]" in table
    assert "correct − wrong" in table and "AUROC err" in table


def test_early_layer_note_is_shown():
    s = {**SUMMARY, "cam": {**SUMMARY["cam"], "note": "the default layer stem (14×14 at 224 px) is an early one"}}
    con = Console(width=200, color_system=None, force_terminal=False, record=True)
    print_summary(s, None, con)
    assert s["cam"]["note"] in _line(con.export_text(), "Layer:")
    con = Console(width=200, color_system=None, force_terminal=False, record=True)
    print_summary(SUMMARY, None, con)
    assert "Layer:" not in con.export_text()


def test_shortcut_the_maps_do_not_show_is_said_after_the_counterfactual_line():
    hidden = [{"region": "ruler", "text": "removing ruler changes 40% [30%, 50%] of the predictions"}]
    cf = {"regions": {"ruler": {"n": 50, "flip_rate": _est(0.4, 0.3, 0.5, 50)}}, "hidden": hidden}
    con = Console(width=200, color_system=None, force_terminal=False, record=True)
    print_summary({**SUMMARY, "counterfactual": cf}, None, con)
    text = con.export_text()
    assert hidden[0]["text"] in text and hidden[0]["region"] in text
    assert text.index("Counterfactual (artifact removed)") < text.index(hidden[0]["text"])
    con = Console(width=200, color_system=None, force_terminal=False, record=True)
    print_summary({**SUMMARY, "counterfactual": {**cf, "hidden": []}}, None, con)
    assert "Counterfactual (artifact removed)" in con.export_text() and hidden[0]["text"] not in con.export_text()


def test_bit_depth_note_is_shown():
    note = "4 of 120 images are 16-bit grayscale, divided by 65535 (input.scale16: full)"
    s = {**SUMMARY, "data": {**SUMMARY["data"], "bit_depth_note": note}}
    con = Console(width=300, color_system=None, force_terminal=False, record=True)
    print_summary(s, None, con)
    assert note in _line(con.export_text(), "Bit depth:")
    con = Console(width=300, color_system=None, force_terminal=False, record=True)
    print_summary(SUMMARY, None, con)
    assert "Bit depth:" not in con.export_text()


def test_skipped_images_point_at_errors_csv(tmp_path):
    """Skipped images: the head line says where their reasons are, and the Files line lists errors.csv."""
    for f in ("per_image.csv", "errors.csv"):
        (tmp_path / f).write_text("x")
    con = Console(width=200, color_system=None, force_terminal=False, record=True)
    print_summary(SUMMARY, str(tmp_path), con)
    text = con.export_text()
    assert "skipped 3" in text.splitlines()[0] and "errors.csv" in text.splitlines()[0]
    assert _files(_line(text, "Files:")) == ["per_image.csv", "errors.csv"]
    clean = dict(SUMMARY, data=dict(SUMMARY["data"], n_skipped=0))
    con = Console(width=200, color_system=None, force_terminal=False, record=True)
    print_summary(clean, None, con)
    assert "skipped" not in con.export_text() and "errors.csv" not in con.export_text()


def _long_summary():
    import copy
    s = copy.deepcopy(SUMMARY)
    s["data"]["split_note"] = ("the manifest has no split column, so no split chose the audited rows: this may be "
                               "auditing training data (any image the model was trained on reads optimistic)")
    op = s["operating_points"]
    op["tuning"] = "cross-fit on audited split (no validation split)"
    op["rule"] = "each threshold is the k-th highest score of the P tuning positives, k = ⌈target·(P+1)⌉"
    op["warning"] = ("no validation split (none named val, valid or validation): thresholds are tuned by "
                     "cross-fitting on the audited split (5-fold stratified; each fold scored with the threshold "
                     "tuned on the others)")
    return s


def test_file_console_never_breaks_a_phrase():
    """#26: written to a file, the summary's lines were wrapped at 100 columns mid-phrase ('see \\nerrors.csv').
    The file console keeps every text line whole (soft wrap) and still sizes the tables for 100 columns."""
    import io

    from audit.terminal import out_console
    buf = io.StringIO()
    con = out_console(buf)
    assert con.width == 100 and con.soft_wrap and not con.is_terminal
    s = _long_summary()
    print_summary(s, "reports/run_x", con)
    lines = buf.getvalue().splitlines()
    assert "\x1b[" not in buf.getvalue()
    # every text line longer than 100 columns, as an unbounded console renders it, is a whole line of the file
    wide = Console(width=10_000, color_system=None, force_terminal=False, record=True)
    print_summary(s, "reports/run_x", wide)
    long = [ln.rstrip() for ln in wide.export_text().splitlines() if len(ln.rstrip()) > 100]
    for datum in (s["data"]["split_note"], s["operating_points"]["warning"], "errors.csv"):
        assert any(datum in ln for ln in long), datum        # the long lines include the ones with these data
    for ln in long:
        assert ln in [x.rstrip() for x in lines], ln
    # a table's title (the operating points': class, tuning, n) is one line too
    assert any(all(d in ln for d in ("mel", s["operating_points"]["tuning"], "120", "25")) for ln in lines)
    table_lines = [ln for ln in lines if ln.startswith(("┃", "│", "┏", "└", " lesion", " ruler"))]
    assert table_lines and all(len(ln) <= 100 for ln in table_lines)
    # the same summary on a fixed 100-column console without soft wrap breaks those lines: the test can fail
    plain = Console(width=100, color_system=None, force_terminal=False, record=True)
    print_summary(s, "reports/run_x", plain)
    assert not any(ln in [x.rstrip() for x in plain.export_text().splitlines()] for ln in long)


def test_operating_points_state_the_threshold_rule_and_say_why_they_are_undefined():
    s = _long_summary()
    con = Console(width=300, color_system=None, force_terminal=False, record=True)
    print_summary(s, None, con)
    text = con.export_text()
    assert s["operating_points"]["rule"] in _line(text, "Thresholds:")
    note = "no positives of class mel among the 120 audited images and no validation split: thresholds cannot be tuned"
    nan = _est(None, n=0)
    s["operating_points"].update(warning=note, n_pos=0, points=[
        {"target_sensitivity": 0.9, "threshold": None, "sensitivity": nan, "specificity": nan, "ppv": nan,
         "npv": nan}])
    con = Console(width=300, color_system=None, force_terminal=False, record=True)
    print_summary(s, None, con)
    text = con.export_text()
    assert note in _line(text, "warning:") and "0-fold" not in text
    assert s["operating_points"]["rule"] not in text and "Thresholds:" not in text   # no threshold to explain


def test_split_note_is_a_line_of_its_own():
    con = Console(width=300, color_system=None, force_terminal=False, record=True)
    print_summary(_long_summary(), None, con)
    assert _long_summary()["data"]["split_note"] in _line(con.export_text(), "Split:")
    con = Console(width=300, color_system=None, force_terminal=False, record=True)
    print_summary(SUMMARY, None, con)
    assert "Split:" not in con.export_text()


def test_golden_rendering_at_100_columns():
    """The whole terminal summary of the fixture, as text, against tests/golden/terminal_summary.txt."""
    from conftest import assert_golden
    con = Console(width=100, color_system=None, force_terminal=False, record=True)
    print_summary(SUMMARY, "reports/run_x", con)
    assert_golden("terminal_summary.txt", con.export_text())


def _having(text: str, part: str) -> str:
    """The one line of a rendering that holds `part`."""
    (line,) = [ln for ln in text.splitlines() if part in ln]
    return line


def _discover_summary(n_groups: int) -> dict:
    rows = [{"kind": "cluster" if i % 2 == 0 else "slice", "id": i, "rank": i + 1, "n": 20 + i,
             "suspicion": round(0.9 - 0.1 * i, 2), "reason": "gap", "flag": i == 0,
             "prototypes": [f"img_{i}_{k}" for k in range(7)], "text": f"group {i}: accuracy 0.{50 + i} vs 0.90"}
            for i in range(n_groups)]
    return {"ranking": rows}


def test_discover_renderable_shows_the_top_groups_their_prototypes_and_where_their_overlays_are(tmp_path):
    """The discover block (`cli.py discover`, `audit --discover`): the n most suspicious groups with their text, at
    most 5 prototypes each, the overlays' folder only where it exists, and how many more groups are ranked."""
    from audit.terminal import discover_renderable
    (tmp_path / "gallery" / "discover_cluster_0").mkdir(parents=True)
    (tmp_path / "discover").mkdir()
    (tmp_path / "discover" / "slice_1.png").write_bytes(b"")
    con = Console(width=400, color_system=None, force_terminal=False, record=True)  # long tmp paths on one line
    con.print(discover_renderable(_discover_summary(5), str(tmp_path), n=3))
    text = con.export_text()
    lines = text.splitlines()
    for i in range(3):
        assert any(f"group {i}: accuracy 0.{50 + i} vs 0.90" in ln for ln in lines)
        protos = _having(text, f"img_{i}_0")
        assert [f"img_{i}_{k}" in protos for k in range(7)] == [True] * 5 + [False] * 2
    assert str(tmp_path / "gallery" / "discover_cluster_0") in _having(text, "img_0_0")
    assert str(tmp_path / "discover" / "slice_1.png") in _having(text, "img_1_0")      # no gallery: the mean map
    assert str(tmp_path) not in _having(text, "img_2_0")                                # neither: nothing named
    assert "group 3" not in text and " 2 more " in _having(text, "groups.csv")
    con = Console(width=100, color_system=None, force_terminal=False, record=True)
    con.print(discover_renderable({"ranking": [], "skipped": "too few images (n=7 < min_n=10)"}))
    assert "too few images (n=7 < min_n=10)" in con.export_text()
    from conftest import assert_golden
    con = Console(width=100, color_system=None, force_terminal=False, record=True)
    con.print(discover_renderable(_discover_summary(4), "reports/run_x", n=3))
    assert_golden("discover_block.txt", con.export_text())
