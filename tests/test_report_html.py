"""report.html: self-contained, escaped, and rendered by a real browser (headless Chromium) without console errors.

The browser tests skip when no Chromium is installed (`apt-get install chromium`).
"""
from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from audit.report import render_reports
from summary_fixtures import parse
from test_report_fixtures import build_out_dir

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]


def _chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    for c in ((env,) if env else ()) + CANDIDATES:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(args: list[str], tmp: Path, tag: str) -> subprocess.CompletedProcess:
    exe = _chromium()
    if exe is None:
        pytest.skip("headless Chromium not found (looked for /usr/bin/chromium, chromium-browser, google-chrome; "
                    "set CHROMIUM=path or apt-get install chromium)")
    profile = tmp / f"profile_{tag}"
    profile.mkdir()
    try:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                              timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within 90 s ({tag})")


def _console_problems(stderr: str) -> list[str]:
    """Console messages (the page has no script, so any is a problem), uncaught errors, failed loads."""
    return [ln for ln in stderr.splitlines()
            if ":CONSOLE" in ln or "Uncaught" in ln or "Failed to load resource" in ln or "net::ERR_" in ln]


def _reading(report: Path, image_id: str) -> str:
    """The gallery's one-line reading of one image of the report's run, as `audit.report.gallery.reading` words it."""
    from audit.report.gallery import reading, words_for
    from audit.report.inputs import read_out_dir
    inp = read_out_dir(report.parent)
    row = inp.per_image.set_index("image_id").loc[image_id].to_dict()
    return reading(row, inp.positive, inp.kinds, words_for(inp), inp.classes)


def _escaped(text: str) -> str:
    import html
    return html.escape(text, quote=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = build_out_dir(tmp_path_factory.mktemp("report"))
    return render_reports(out, n_per_group=4)["html"]


def test_page_is_self_contained_and_escaped(report):
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "&lt;script&gt;" in page and "tiny_&lt;run&gt;" in page     # names from the run are escaped
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert len(srcs) == 5 + 6                                          # 5 plots + 6 gallery overlays (4 groups)
    for s in srcs:
        assert s.startswith("data:image/png;base64,"), s[:60]
        im = Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1])))
        assert im.format == "PNG" and im.width > 100
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:|//|file:)""", page)
    assert 'class="fail">FAIL<' in page and 'class="pass">pass<' in page and 'class="undef">undefined<' in page
    for heading in ("Sign-off gates", "Where the evidence lies", "Operating points for melanoma",
                    "Counterfactual check", "Plots", "Gallery"):
        assert f"<h2>{heading}</h2>" in page, heading


def test_chromium_renders_dom_without_console_errors(report, tmp_path):
    r = _run(["--dump-dom", report.as_uri()], tmp_path, "dom")
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    assert dom.count("<table") >= 5, "expected the accuracy, gates, region, operating-point, counterfactual tables"
    assert dom.count("<img") == 11
    assert "Verdict: FAIL" in dom and "min_median_target_frac" in dom
    assert _reading(report, "img_a") in dom                          # the gallery's reading of img_a, rendered
    assert _console_problems(r.stderr) == []


def test_console_check_is_not_vacuous(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><script>throw new Error("planted")</script></body></html>')
    r = _run(["--dump-dom", bad.as_uri()], tmp_path, "bad")
    assert any("planted" in ln for ln in _console_problems(r.stderr)), r.stderr[-2000:]


def test_chromium_screenshot_is_not_blank(report, tmp_path):
    shot = tmp_path / "shot.png"
    r = _run([f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri()], tmp_path, "shot")
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    assert _console_problems(r.stderr) == []
    im = Image.open(shot)
    assert im.format == "PNG" and im.size == (1200, 2000)
    a = np.asarray(im.convert("RGB")).astype(int)
    assert a.std() > 20, "screenshot is (nearly) uniform"
    assert (a.sum(2) < 150).mean() > 0.002, "no dark text pixels"
    fail_red = (abs(a[..., 0] - 255) < 3) & (abs(a[..., 1] - 214) < 3) & (abs(a[..., 2] - 214) < 3)
    assert fail_red.sum() > 200, "the FAIL verdict / gate cell (#ffd6d6) is not visible in the first screen"


# ---- ISIC metrics, by_artifact, by_group sections (known answers on a hand-built summary) ----

NEW_HEADINGS = ("ISIC challenge metrics", "With vs without each artifact", "Evidence by group")


def _est(v, lo, hi, n, small=False, note=""):
    return {"value": v, "lo": lo, "hi": hi, "n": n, "too_small": small, "p": None, "note": note}


EXTRA = {
    "isic_metrics": {
        "n": 120, "classes": ["benign", "melanoma"], "min_tpr": 0.8, "n_per_class": {"benign": 115, "melanoma": 5},
        "balanced_accuracy": _est(0.8123, 0.70, 0.90, 120, note="2 classes present"),
        "accuracy": _est(0.75, 0.66, 0.82, 120),
        "auc": {"benign": _est(0.9234, 0.88, 0.96, 120), "melanoma": _est(None, None, None, 120, True)},
        "pauc": {"benign": _est(0.1412, 0.12, 0.16, 120), "melanoma": _est(None, None, None, 120, True)},
        "auc_above": {"benign": _est(0.7061, 0.6, 0.8, 120), "melanoma": _est(None, None, None, 120, True)},
        "auc_mean": _est(0.9234, 0.88, 0.96, 120, note="mean over 1 of 2 classes; excluded: ['melanoma']"),
        "pauc_mean": _est(float("nan"), float("nan"), float("nan"), 120),      # NaN (summary before clean_json)
        "auc_above_mean": None,
    },
    "by_artifact": {
        "<ruler>": {"with": {"n": 30, "accuracy": _est(0.6, 0.42, 0.76, 30), "sensitivity": _est(0.5, 0.3, 0.7, 12),
                             "specificity": _est(None, None, None, 8, True)},
                    "without": {"n": 90, "accuracy": _est(0.9, 0.82, 0.95, 90), "sensitivity": None,
                                "specificity": _est(float("nan"), None, None, 0)}},
    },
    "by_group": {"columns": ["label", "site"], "rows": [
        {"region": "frac_lesion", "group_col": "label", "group": "melanoma", "n": 40, "stat": "median_all",
         "value": 0.8123, "lo": 0.70, "hi": 0.90, "too_small": False, "p": None},
        {"region": "frac_ruler", "group_col": "site", "group": "clinic_b", "n": 7, "stat": "diff_median",
         "value": 0.5555, "lo": 0.4444, "hi": 0.6666, "too_small": True, "p": None},
        {"region": "frac_ruler", "group_col": "site", "group": None, "n": None, "stat": "spearman_conf_all",
         "value": float("nan"), "lo": None, "hi": None, "too_small": False, "p": float("nan")},
        {"region": "frac_lesion", "group_col": "site", "group": "clinic_a", "n": 300, "stat": "spearman_conf_all",
         "value": 0.31, "lo": 0.2, "hi": 0.41, "too_small": False, "p": 2e-8},
        {"region": "frac_ruler", "group_col": "label", "group": "nevus", "n": 324, "stat": "diff_median",
         "value": float("nan"), "lo": None, "hi": None, "too_small": True, "p": None,
         "note": "n_correct=0, n_incorrect=324"},
    ]},
}


@pytest.fixture(scope="module")
def plain_inputs(tmp_path_factory):
    from audit.report.inputs import read_out_dir
    return read_out_dir(build_out_dir(tmp_path_factory.mktemp("sections")))


def _page(inp, extra: dict) -> str:
    import copy

    from audit.report.html import render_html
    inp = copy.copy(inp)
    inp.summary = parse({**inp.summary.to_json(), **copy.deepcopy(extra)})   # through the types, as summary.json
    return render_html(inp, {}, [], [])


def _rows(page: str, heading: str) -> list[list[str]]:
    """The cell texts of every table row in the section under <h2>heading</h2>."""
    sec = page.split(f"<h2>{heading}</h2>", 1)[1].split("<h2>", 1)[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", sec) if "<td" in tr]


def test_new_sections_known_answers(plain_inputs):
    page = _page(plain_inputs, EXTRA)
    for h in NEW_HEADINGS:
        assert f"<h2>{h}</h2>" in page, h
    # after the operating points, before the counterfactual check, in this order
    pos = [page.index(f"<h2>{h}</h2>") for h in ("Operating points for melanoma", *NEW_HEADINGS,
                                                 "Counterfactual check")]
    assert pos == sorted(pos)

    isic = _rows(page, "ISIC challenge metrics")
    assert ["balanced accuracy (balanced_accuracy)", "0.812 [0.700, 0.900]", "120", "2 classes present"] in isic
    assert ["accuracy (accuracy)", "0.750 [0.660, 0.820]", "120", ""] in isic
    assert ["mean pAUC (pauc_mean)", "n/a", "120", ""] in isic                         # NaN → n/a, no "[n/a, n/a]"
    assert ["mean AUC, Sens &gt; 80% (auc_above_mean)", "n/a", "120", ""] in isic       # None → n/a
    assert ["benign", "115", "0.923 [0.880, 0.960]", "0.141 [0.120, 0.160]", "0.706 [0.600, 0.800]"] in isic
    small = "small n_pos=5, n_neg=115"                                # small because of the positives, not n=120
    assert ["melanoma", "5", small, small, small] in isic
    assert "pAUC, TPR ≥ 80% (pauc)" in page and "AUC, Sens &gt; 80% (auc_above)" in page

    art = _rows(page, "With vs without each artifact")
    assert art == [["&lt;ruler&gt;", "with", "30", "60% [42%, 76%]", "50% [30%, 70%]", "small n=8"],
                   ["&lt;ruler&gt;", "without", "90", "90% [82%, 95%]", "n/a", "n/a"]]
    assert "<ruler>" not in page

    grp = _rows(page, "Evidence by group")
    assert grp[0] == ["lesion", "label", "melanoma", "median frac (median_all)", "0.81 [0.70, 0.90]", "40", ""]
    assert grp[1] == ["ruler", "site", "clinic_b", "correct − wrong (diff_median)", "small n=7", "7", ""]
    assert grp[2] == ["ruler", "site", "n/a", "ρ(conf) (spearman_conf_all)", "n/a", "n/a", ""]
    assert grp[3][-1] == "&lt; 0.001"                                     # never "0.000"
    assert grp[4][4] == "none correct"             # not "small n=324": the short group is named, as in the terminal
    sec = page.split("<h2>Evidence by group</h2>", 1)[1].split("<h2>", 1)[0]
    assert "0.56" not in sec and "0.44" not in sec and "0.67" not in sec   # a small group gets no number
    assert "nan" not in page.lower()


def test_new_sections_omitted_when_missing_or_empty(plain_inputs, report):
    fixture_page = report.read_text(encoding="utf-8")         # the fixture summary has none of the three keys
    for page in (fixture_page, _page(plain_inputs, {}),
                 _page(plain_inputs, {"isic_metrics": {}, "by_artifact": {}, "by_group": {"columns": ["label"],
                                                                                          "rows": []}}),
                 _page(plain_inputs, {"isic_metrics": None, "by_artifact": None, "by_group": None})):
        for h in NEW_HEADINGS:
            assert f"<h2>{h}</h2>" not in page, h
    assert "<h2>Operating points for melanoma</h2>" in fixture_page


def test_by_artifact_without_positive_class_shows_accuracy_only(plain_inputs):
    extra = {"by_artifact": {"ruler": {"with": {"n": 12, "accuracy": _est(0.5, 0.25, 0.75, 12)},
                                       "without": {"n": 3, "accuracy": _est(None, None, None, 3, True)}}}}
    rows = _rows(_page(plain_inputs, extra), "With vs without each artifact")
    assert rows == [["ruler", "with", "12", "50% [25%, 75%]"], ["ruler", "without", "3", "small n=3"]]


def test_missing_region_reasons_are_listed_and_escaped(plain_inputs):
    regs = {r: dict(e) for r, e in plain_inputs.summary.to_json()["regions"].items()}
    first = next(iter(regs))
    regs[first]["missing_reasons"] = {"mask file not found": 3, "<all-zero> map": 1}
    page = _page(plain_inputs, {"regions": regs})
    sec = page.split("<h2>Where the evidence lies</h2>", 1)[1].split("<h2>", 1)[0]
    line = next(ln for ln in sec.splitlines() if f"<b>{first}</b>" in ln)       # the region, each reason's count
    assert "mask file not found (3)" in line and "&lt;all-zero&gt; map (1)" in line and "<all-zero>" not in page
    plain = _page(plain_inputs, {}).split("<h2>Where the evidence lies</h2>", 1)[1].split("<h2>", 1)[0]
    assert f"<b>{first}</b>" not in plain and "mask file not found" not in plain


def test_discover_method_reads_as_lines_not_a_dict(plain_inputs):
    d = {"method": {"clusters": "SpRAy-style <spectral>", "slices": "Domino-style"},
         "ranking": [{"kind": "slice", "id": 1, "n": 12, "suspicion": 0.4, "text": "slice 1: 12 images"}]}
    page = _page(plain_inputs, {"discover": d})
    sec = page.split("<h2>Discovered groups (no masks needed)</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<b>clusters</b>: SpRAy-style &lt;spectral&gt;<br><b>slices</b>: Domino-style" in sec
    assert "{&#x27;" not in sec and "<li>slice 1: 12 images</li>" in sec


def test_accuracy_section_gives_the_calibration_error_with_its_ci_and_n(plain_inputs):
    cal = {"calibration": {"ece": _est(0.083, 0.061, 0.11, 120), "ece_if_calibrated": 0.0412, "n_bins": 10,
                           "method": "…"}}
    page = _page(plain_inputs, cal)
    sec = page.split("<h2>Accuracy</h2>", 1)[1].split("<h2>", 1)[0]
    line = next(ln for ln in sec.splitlines() if "0.083" in ln)   # the ECE, its CI, n, bins, a calibrated model's
    for datum in ("0.083 [0.061, 0.110]", "n = 120", "10 ", "0.041"):
        assert datum in line, datum
    small = {"calibration": {"ece": _est(None, None, None, 4, True), "n_bins": 10, "method": ""}}
    sec = _page(plain_inputs, small).split("<h2>Accuracy</h2>", 1)[1].split("<h2>", 1)[0]
    assert "small n=4" in sec and "0.083" not in sec


def test_region_table_gives_the_lift_with_its_ci(plain_inputs):
    regs = {r: dict(e) for r, e in plain_inputs.summary.to_json()["regions"].items()}
    regs["ruler"]["lift"] = _est(5.0, 3.94, 6.61, 4)
    page = _page(plain_inputs, {"regions": regs})
    rows = {row[0]: row for row in _rows(page, "Where the evidence lies")}
    assert rows["ruler"][4] == "5.00× [3.94, 6.61]"
    assert rows["lesion"][4] == "1.50×"  # no estimate with a CI in the summary: the point alone, no "[nan, nan]"
    regs["ruler"]["median_lift"], regs["ruler"]["lift"] = 12.34, _est(12.34, 10.06, 15.2, 40)
    rows = {row[0]: row for row in _rows(_page(plain_inputs, {"regions": regs}), "Where the evidence lies")}
    assert rows["ruler"][4] == "12.3× [10.1, 15.2]"
    regs["ruler"]["lift"] = _est(None, None, None, 4, True)
    rows = {row[0]: row for row in _rows(_page(plain_inputs, {"regions": regs}), "Where the evidence lies")}
    assert rows["ruler"][4] == "small n=4"  # as the terminal says it
    assert "median lift [95% CI]" in page


def test_lift_alarm_follows_the_gate_else_the_off_target_rule(plain_inputs):
    from audit.summary import lift_alarm, target_floor
    gate = {"name": "max_artifact_lift[ruler]", "threshold": 6.0}
    ot = lambda **k: {"rate": {"value": None}, "n_undefined": 0, "rule": "", "artifact_lift": 3.0,  # noqa: E731
                      "target_frac": 0.5, **k}
    assert lift_alarm(parse({"gates": [gate], "off_target": ot(artifact_lift=3.0)})) == 6.0
    assert lift_alarm(parse({"gates": [], "off_target": ot(artifact_lift=4.0)})) == 4.0
    assert lift_alarm(parse({})) == 3.0
    assert target_floor(parse({"gates": [{"name": "min_median_target_frac[lesion]", "threshold": 0.3}]})) == 0.3
    assert target_floor(parse({"off_target": ot(target_frac=0.4)})) == 0.4 and target_floor(parse({})) == 0.5

    def ruler_cell(extra):
        page = _page(plain_inputs, extra)
        sec = page.split("<h2>Where the evidence lies</h2>", 1)[1].split("<h2>", 1)[0]
        row = next(tr for tr in re.findall(r"<tr>(.*?)</tr>", sec) if ">ruler<" in tr)
        return re.findall(r"<td([^>]*)>", row)[3]  # the median-frac cell carries the colour
    assert "fail" in ruler_cell({"gates": [dict(gate, threshold=2.0)]})    # lift 5.0 fails a gate of 2
    assert "fail" not in ruler_cell({"gates": [gate]})                    # ... not one of 6

    def lesion_cell(extra):  # the fixture's lesion median is 0.22
        sec = _page(plain_inputs, extra).split("<h2>Where the evidence lies</h2>", 1)[1].split("<h2>", 1)[0]
        return re.findall(r"<td([^>]*)>", next(tr for tr in re.findall(r"<tr>(.*?)</tr>", sec) if ">lesion<" in tr))[3]
    assert "undef" in lesion_cell({"gates": []})                                             # under the default 0.5
    assert "pass" in lesion_cell({"gates": [{"name": "min_median_target_frac[lesion]", "threshold": 0.2}]})


def test_shortcut_the_maps_do_not_show_is_under_the_verdict_and_in_the_counterfactual_section(plain_inputs):
    hidden = [{"region": "ruler", "text": "removing ruler changes 40% <of> the predictions"}]
    cf = {"counterfactual": {"method": "m", "regions": {"ruler": {"n": 50, "flip_rate": _est(0.4, 0.3, 0.5, 50)}},
                             "hidden": hidden}}
    page = _page(plain_inputs, cf)
    item = "<li><b>ruler</b>: removing ruler changes 40% &lt;of&gt; the predictions.</li>"
    head = page.split("<h2>", 1)[0]
    sec = page.split("<h2>Counterfactual check</h2>", 1)[1].split("<h2>", 1)[0]
    assert item in head and item in sec and 'class="alarm"' in head
    cf["counterfactual"]["hidden"] = []
    page = _page(plain_inputs, cf)
    assert "removing ruler changes" not in page and 'class="alarm"' not in page.split("<h2>", 1)[0]


def test_bit_depth_note_is_shown(plain_inputs):
    note = "4 of 6 images are 16-bit grayscale, divided by 65535 (input.scale16: full); <mixed>"
    page = _page(plain_inputs, {"data": {**plain_inputs.summary.to_json()["data"], "bit_depth_note": note}})
    assert _escaped(note) in page and "<mixed>" not in page
    assert page.count('<p class="note">') == _page(plain_inputs, {}).count('<p class="note">') + 1   # no empty line


def test_accuracy_by_group_known_answers(plain_inputs):
    import pandas as pd

    from audit.summary import accuracy_by_group
    df = pd.DataFrame({"site": ["a"] * 12 + ["b"] * 3 + [None] * 2, "correct": [True] * 9 + [False] * 3 + [True] * 3
                       + [False, True]})
    abg = accuracy_by_group(df, "site", min_n=10)
    assert list(abg) == ["a", "b", "<missing>"]                         # largest first, missing as its own group
    assert abg["a"].n == 12 and abg["a"].accuracy.value == 0.75 and not abg["a"].too_small
    assert abg["b"].too_small and abg["<missing>"].accuracy.value == 0.5
    page = _page(plain_inputs, {"accuracy_by_group": {"site": {g: e.to_json() for g, e in abg.items()}}})
    rows = _rows(page, "Accuracy by group")
    assert rows[0][:3] == ["site", "a", "12"] and rows[0][3].startswith("75%")
    assert rows[1] == ["site", "b", "3", "small n=3"]
    assert "<h2>Accuracy by group</h2>" not in _page(plain_inputs, {})


def test_split_note_and_threshold_rule_are_shown(plain_inputs):
    note = "the manifest has no split column, so no split chose the audited rows: this may be auditing training data"
    page = _page(plain_inputs, {"data": {**plain_inputs.summary.to_json()["data"], "split_note": note}})
    assert note in page
    assert page.count('<p class="note">') == _page(plain_inputs, {}).count('<p class="note">') + 1   # no empty line
    op = {**plain_inputs.summary.to_json()["operating_points"], "rule": "each threshold is the k-th highest <score>"}
    page = _page(plain_inputs, {"operating_points": op})
    assert _escaped(op["rule"]) in page and "<score>" not in page
