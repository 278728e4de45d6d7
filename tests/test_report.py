"""Report layer: overlays (peak location, RGB order), the gallery's text for a known table, plots, render_reports."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.errors import RunDirError
from audit.report import overlay_image, read_out_dir, render_reports
from audit.report.gallery import Words, caption, reading, select_candidates
from audit.summary import most_confident_first
from audit.report.overlay import ARTIFACT_RGB, TARGET_RGB, display_cam, outline
from audit.report.plots import reliability_bins
from conftest import assert_golden
from summary_fixtures import complete

from audit.summary_types import AuditSummary
from test_report_fixtures import ROWS, build_out_dir


# ---------------------------------------------------------------------------------------------------------- overlay

def _grey(s: int = 224) -> np.ndarray:
    return np.full((s, s, 3), 128, np.uint8)


@pytest.mark.parametrize("blocky", [False, True])
def test_overlay_peak_is_red_at_top_left(blocky):
    cam = np.zeros((7, 7), np.float32)
    cam[0, 0] = 5.0
    im = overlay_image(_grey(), cam, caption="", blocky=blocky)
    a = np.asarray(im).astype(int)
    assert im.mode == "RGB" and a.shape == (224, 224, 3)
    redness = a[..., 0] - a[..., 2]
    y, x = np.unravel_index(np.argmax(redness), redness.shape)
    assert y < 32 and x < 32, f"reddest pixel at {(y, x)}, expected inside the top-left 32×32 cell"
    r, g, b = a[4, 4]
    assert r > b + 40, f"top-left pixel {(r, g, b)}: red must dominate (jet's hot end in RGB, not BGR)"
    r, g, b = a[200, 200]
    assert b > r + 40, f"far corner {(r, g, b)}: blue must dominate (jet's cold end)"


def test_overlay_blocky_shows_the_layer_grid():
    cam = np.zeros((7, 7), np.float32)
    cam[0, 0] = 1.0
    a = np.asarray(overlay_image(_grey(), cam, blocky=True)).astype(int)
    assert (a[:32, :32] == a[0, 0]).all()           # one flat 32×32 block per layer cell
    assert not (a[32:64, :32] == a[0, 0]).all()
    smooth = np.asarray(overlay_image(_grey(), cam, blocky=False)).astype(int)
    assert not (smooth[:32, :32] == smooth[0, 0]).all()


def test_overlay_outlines_and_caption():
    s = 224
    m_t = np.zeros((s, s), bool)
    m_t[60:160, 60:160] = True
    m_a = np.zeros((s, s), bool)
    m_a[200:210, 20:120] = True
    cam = np.ones((7, 7), np.float32)
    im = overlay_image(_grey(), cam, {"lesion": m_t, "ruler": m_a, "gone": None},
                       {"lesion": "target", "ruler": "artifact", "gone": "artifact"}, caption="Pred a (0.90) · True b")
    a = np.asarray(im)
    assert im.height > s and im.width == s          # caption strip below
    assert tuple(a[60, 100]) == TARGET_RGB and tuple(a[100, 60]) == TARGET_RGB
    assert tuple(a[200, 50]) == ARTIFACT_RGB
    assert tuple(a[100, 100]) != TARGET_RGB          # outline only, not filled
    strip = a[s:]
    assert (strip < 100).any() and (strip == 255).any()  # dark text on white


def test_overlay_small_grid_enlarged_and_zero_cam_noted():
    im = overlay_image(_grey(32), np.zeros((4, 4), np.float32), caption="x")
    assert im.width == 224                          # 32 px × 7
    pic = np.asarray(im)[:224]
    assert (pic == 128).all()                       # no heat drawn for an all-zero CAM


def test_display_cam_is_display_only_minmax():
    cam = np.array([[0.0, 2.0], [4.0, 8.0]], np.float32)
    d = display_cam(cam, 8, blocky=True)
    assert d.shape == (8, 8) and math.isclose(float(d.max()), 1.0, rel_tol=1e-5) and float(d.min()) == 0.0
    assert cam.max() == 8.0                         # the caller's map is untouched
    assert display_cam(np.zeros((3, 3)), 9) is None


def test_overlay_validates_inputs():
    with pytest.raises(TypeError, match="grid_img"):
        overlay_image(_grey().astype(np.float32), np.ones((7, 7)))
    with pytest.raises(ValueError, match="grid_img"):
        overlay_image(np.zeros((10, 12, 3), np.uint8), np.ones((7, 7)))
    with pytest.raises(ValueError, match="cam_hw"):
        overlay_image(_grey(), np.ones((1, 7, 7)))
    with pytest.raises(ValueError, match=r"masks\['m'\]"):
        overlay_image(_grey(), np.ones((7, 7)), {"m": np.ones((10, 10), bool)}, {"m": "target"})


def test_outline_is_the_inner_boundary():
    m = np.zeros((6, 6), bool)
    m[1:5, 1:5] = True
    o = outline(m)
    assert o.sum() == 12 and not o[2:4, 2:4].any()


# ---------------------------------------------------------------------------------------------------------- gallery

def test_readings_and_captions():
    kinds = {"lesion": "target", "ruler": "artifact"}
    w = Words(high_conf=0.9, low_conf=0.6, artifact_lift=3.0)
    row = {"label": "melanoma", "pred": "benign", "correct": False, "confidence": 0.93, "p_melanoma": 0.07,
           "frac_lesion": 0.22, "frac_outside_lesion": 0.78, "frac_ruler": 0.4, "lift_ruler": 8.0}
    # one clause each: the error (class named), the target's outside share, the artifact above the lift word
    # threshold (its share and lift), the confidence word (the wording: tests/golden/gallery_md.txt)
    err, target, ruler, conf = reading(row, "melanoma", kinds, w).split("; ")
    assert "melanoma" in err and "benign" not in err                          # a false negative of the positive
    assert "78%" in target and "lesion" in target
    assert "40%" in ruler and "8.0×" in ruler and "ruler" in ruler
    assert conf == w.confidence_word(0.93) == "confident"
    assert caption(row, "melanoma", kinds).split(" · ") == [                  # compact labels of the row's numbers
        "Pred benign (0.93)", "True melanoma", "P(melanoma)=0.07", "in-lesion 22%"]
    row2 = dict(row, label="nevus", pred="bcc", lift_ruler=2.0, confidence=0.5, frac_lesion=float("nan"),
                frac_outside_lesion=float("nan"))
    err, target, conf = reading(row2, "melanoma", kinds, w).split("; ")      # lift 2 ≤ 3: the ruler is not named
    assert "nevus" in err and "bcc" in err and "%" not in target and "lesion" in target
    assert conf == w.confidence_word(0.5) == "uncertain"
    assert reading(row2, None, {}, w).split("; ") == [err, conf]             # no regions: no region clause


def test_reading_names_a_counterfactual_flip():
    kinds = {"lesion": "target", "ruler": "artifact", "ink": "artifact"}
    w = Words(high_conf=0.9, low_conf=0.6, artifact_lift=3.0)
    row = {"label": "benign", "pred": "melanoma", "correct": False, "confidence": 0.95, "frac_outside_lesion": 0.6,
           "cf_flip_ruler": 1.0, "cf_pred_ruler": 0, "cf_flip_ink": 0.0, "cf_pred_ink": 1}
    from audit.report.gallery import counterfactual_flips
    assert counterfactual_flips(row, kinds, ["benign", "melanoma"]) == [("ruler", "benign")]   # ink: unchanged
    parts = reading(row, "melanoma", kinds, w, ["benign", "melanoma"]).split("; ")
    assert len(parts) == 4 and "60%" in parts[1]
    assert "ruler" in parts[2] and "benign" in parts[2] and "ink" not in parts[2]   # the flip: region, class read
    # not tested (NaN, −1) or unchanged: nothing said; no class list: the class is not guessed
    quiet = dict(row, cf_flip_ruler=float("nan"), cf_pred_ruler=-1)
    assert counterfactual_flips(quiet, kinds, ["benign", "melanoma"]) == []
    assert len(reading(quiet, "melanoma", kinds, w, ["benign", "melanoma"]).split("; ")) == 3
    assert counterfactual_flips(row, kinds, None) == [("ruler", "another class")]
    assert "benign" not in reading(row, "melanoma", kinds, w).split("; ")[2]
    assert caption(row, "melanoma", kinds, ["benign", "melanoma"]) == \
        "Pred melanoma (0.95) · True benign · P(melanoma)=n/a · in-lesion n/a · w/o ruler: benign"


def test_select_candidates_ranks_and_seeds():
    df = pd.DataFrame({"image_id": list("abcdef"), "label": ["p", "p", "n", "n", "p", "n"],
                       "pred": ["n", "n", "p", "n", "p", "n"], "confidence": [0.7, 0.9, 0.95, 0.8, 0.9, 0.6],
                       "correct": [False, False, False, True, True, True],
                       "flag_off_target": [True, False, False, True, True, False]})
    c = select_candidates(df, "p", seed=0)
    assert list(c["confident_errors"]["image_id"]) == ["c", "b", "a"]
    assert list(c["false_negatives"]["image_id"]) == ["b", "a"]
    assert list(c["off_target_correct"]["image_id"]) == ["e", "d"]
    assert sorted(c["random_correct"]["image_id"]) == ["d", "e", "f"]
    assert list(select_candidates(df, "p", seed=0)["random_correct"]["image_id"]) == \
        list(c["random_correct"]["image_id"])
    assert select_candidates(df, None)["false_negatives"].empty


def test_saturated_confidences_are_ranked_by_logit_margin():
    """Float32 softmax rounds many confident cases to exactly 1.0; the margin (log p1/p2) still orders them."""
    df = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "label": ["n"] * 4, "pred": ["p"] * 4,
                       "confidence": [1.0, 1.0, 0.99, 1.0], "margin": [17.0, 19.5, 4.6, float("nan")],
                       "correct": [False] * 4})
    assert list(select_candidates(df, "p")["confident_errors"]["image_id"]) == ["b", "a", "d", "c"]
    assert list(most_confident_first(df.drop(columns="margin"))["image_id"]) == ["a", "b", "d", "c"]


def _gallery_rows(md: str) -> dict[str, list[list[str]]]:
    """GALLERY.md's table rows by group (the folder of each row's overlay link): the cells of each row."""
    out: dict[str, list[list[str]]] = {}
    for ln in md.splitlines():
        if ln.startswith("| ") and "](gallery/" in ln:
            cells = [c.strip() for c in ln.strip("|").split(" | ")]
            out.setdefault(ln.split("](gallery/", 1)[1].split("/", 1)[0], []).append(cells)
    return out


@pytest.fixture
def out_dir(tmp_path) -> Path:
    return build_out_dir(tmp_path)


def test_gallery_markdown_for_known_table(out_dir):
    paths = render_reports(out_dir, n_per_group=8, seed=0)
    md = paths["gallery_md"].read_text(encoding="utf-8")
    assert_golden("gallery_md.txt", md)       # the whole page, as tests/golden/gallery_md.txt
    lines = md.splitlines()
    inp = read_out_dir(out_dir)
    rows = _gallery_rows(md)
    ids = {g: [r[1].split("]", 1)[0].lstrip("[") for r in rs] for g, rs in rows.items()}
    assert ids == {"confident_errors": ["img_a", "img_b"], "false_negatives": ["img_a"],
                   "off_target_correct": ["img_c"], "random_correct": ["img_c", "img_d"]}
    assert ids["random_correct"] == list(select_candidates(inp.per_image, "melanoma", seed=0)["random_correct"]
                                         ["image_id"])
    truth = {r[0]: r for r in ROWS}
    pi = inp.per_image.set_index("image_id")
    for g, rs in rows.items():
        assert [int(r[0]) for r in rs] == list(range(1, len(rs) + 1)), g      # ranks
        for r in rs:
            i = r[1].split("]", 1)[0].lstrip("[")
            _, label, pred, conf, p_mel = truth[i][:5]
            assert r[2:5] == [label, f"{pred} ({conf:.2f})", f"{p_mel:.2f}"], r
            assert r[6] == reading(pi.loc[i].to_dict(), "melanoma", inp.kinds, Words(), inp.classes)
            assert r[7].startswith("peak cell 100%")          # the fixture's maps: one hot cell of 4×4
    for row in lines:
        if row.startswith("| ") and "](gallery/" in row:
            rel = row.split("](", 1)[1].split(")", 1)[0]
            assert (out_dir / rel).is_file(), rel


def test_gallery_overlays_have_outlines_from_manifest_masks(out_dir):
    render_reports(out_dir, n_per_group=2)
    a = np.asarray(Image.open(out_dir / "gallery" / "confident_errors" / "01_img_a.png").convert("RGB"))
    colours = {tuple(c) for c in a.reshape(-1, 3)}
    assert TARGET_RGB in colours, "lesion (file mask joined from the manifest) not outlined"
    assert ARTIFACT_RGB in colours
    # the CAM's hot cell is (0, 0) of a 4×4 layer grid: the reddest quarter is the top-left one
    pic = a[: a.shape[1]].astype(int)
    red = pic[..., 0] - pic[..., 2]
    h = pic.shape[0] // 4
    assert red[:h, :h].mean() > red[-h:, -h:].mean() + 50


def test_n_per_group_and_rerender_removes_stale(out_dir):
    render_reports(out_dir, n_per_group=2)
    assert len(list((out_dir / "gallery" / "confident_errors").glob("*.png"))) == 2
    render_reports(out_dir, n_per_group=1)
    assert [p.name for p in (out_dir / "gallery" / "confident_errors").glob("*.png")] == ["01_img_a.png"]
    render_reports(out_dir, n_per_group=0)
    assert not list((out_dir / "gallery").rglob("*.png"))
    with pytest.raises(ValueError, match="n_per_group"):
        render_reports(out_dir, n_per_group=-1)


def test_missing_image_is_skipped_with_a_note(out_dir):
    (out_dir.parent / "data" / "images" / "img_a.png").unlink()
    paths = render_reports(out_dir)
    md = paths["gallery_md"].read_text(encoding="utf-8")
    assert "- skipped img_a: image not found" in md
    assert "[img_b](gallery/confident_errors/01_img_b.png)" in md     # the next candidate moves up
    assert "skipped img_a: image not found" in paths["html"].read_text(encoding="utf-8")


def test_no_regions_and_no_extras(tmp_path):
    out = build_out_dir(tmp_path, extras=False)
    import yaml
    cfg = yaml.safe_load((out / "config.resolved.yaml").read_text())
    cfg["options"]["regions"], cfg["regions"] = {}, {}
    (out / "config.resolved.yaml").write_text(yaml.safe_dump(cfg))
    s = json.loads((out / "summary.json").read_text())
    s["regions"] = {}
    (out / "summary.json").write_text(json.dumps(s))
    df = pd.read_csv(out / "per_image.csv")
    df.drop(columns=[c for c in df.columns if c.split("_")[0] in ("frac", "area", "lift", "hit", "fraclayer")]
            ).to_csv(out / "per_image.csv", index=False)
    paths = render_reports(out, n_per_group=1)
    assert "plot_region_fractions" not in paths and "plot_counterfactual" not in paths
    assert "plot_reliability" in paths and "plot_roc" in paths
    md = paths["gallery_md"].read_text(encoding="utf-8")
    err, conf = _gallery_rows(md)["confident_errors"][0][6].split("; ")      # no region clause, and no region
    assert "melanoma" in err and conf == "confident"
    page = paths["html"].read_text(encoding="utf-8")
    assert "Sign-off gates" not in page and "No regions configured" in page


def test_missing_files_raise_run_dir_error(tmp_path):
    with pytest.raises(RunDirError, match="cams.npz"):
        out = build_out_dir(tmp_path)
        (out / "cams.npz").unlink()
        render_reports(out)


# ---------------------------------------------------------------------------------------------------------- plots

def test_plots_written_and_state_n(out_dir):
    paths = render_reports(out_dir)
    for name in ("region_fractions", "fraction_vs_confidence", "reliability", "roc", "counterfactual"):
        p = paths[f"plot_{name}"]
        assert p == out_dir / "plots" / f"{name}.png" and p.is_file()
        im = Image.open(p)
        assert im.format == "PNG" and im.width > 300 and np.asarray(im.convert("L")).std() > 5


def test_reliability_bins_and_ece():
    conf = np.array([0.95, 0.95, 0.65, 0.65, 0.65, 0.65, 1.0])
    correct = np.array([True, False, True, True, True, False, True])
    tab, ece = reliability_bins(conf, correct)
    assert list(tab["n"]) == [0, 0, 0, 0, 0, 0, 4, 0, 0, 3]
    # bin 6: acc 0.75, conf 0.65; bin 9: acc 2/3, conf (0.95+0.95+1)/3
    want = 4 / 7 * abs(0.75 - 0.65) + 3 / 7 * abs(2 / 3 - 2.9 / 3)
    assert math.isclose(ece, want, rel_tol=1e-9)
    assert math.isnan(reliability_bins(np.array([]), np.array([], bool))[1])


def test_read_out_dir_resolves_everything(out_dir):
    inp = read_out_dir(out_dir)
    assert inp.positive == "melanoma" and inp.classes == ["benign", "melanoma"]
    assert inp.kinds == {"lesion": "target", "ruler": "artifact", "border": "artifact"}
    assert inp.spec.size == 32 and inp.cams.shape == (4, 4, 4) and inp.layer == "layer4"
    assert "mask" in inp.per_image.columns and inp.per_image["mask"].notna().all()


def test_read_out_dir_parses_the_summary_once_into_its_types(out_dir):
    inp = read_out_dir(out_dir)
    assert isinstance(inp.summary, AuditSummary) and inp.run_name == "tiny_<run>"
    assert inp.summary.regions["ruler"].median_lift == 5.0 and inp.summary.gates[0].passed is False
    assert math.isnan(inp.summary.gates[2].value)                      # null in summary.json: NaN


def test_summary_that_is_not_an_audits_names_the_file_and_the_key(out_dir):
    s = json.loads((out_dir / "summary.json").read_text())
    del s["run"]
    (out_dir / "summary.json").write_text(json.dumps(s))
    with pytest.raises(RunDirError) as e:
        read_out_dir(out_dir)
    msg = str(e.value)
    assert "\n" not in msg and str(out_dir / "summary.json") in msg and "key 'run' missing" in msg
    s = json.loads(json.dumps(complete(s)))
    s["regions"]["ruler"]["lift"] = 5.0                                  # an estimate is an object
    (out_dir / "summary.json").write_text(json.dumps(s))
    with pytest.raises(RunDirError, match=r"summary\.json: .*regions\.ruler\.lift: expected an estimate"):
        render_reports(out_dir)


def test_unknown_summary_keys_are_dropped_with_a_warning_naming_the_file(out_dir):
    s = json.loads((out_dir / "summary.json").read_text())
    s["from_a_newer_auditor"] = {"x": 1}
    (out_dir / "summary.json").write_text(json.dumps(s))
    with pytest.warns(UserWarning, match=r"summary\.json: .*from_a_newer_auditor"):
        inp = read_out_dir(out_dir)
    assert inp.summary.verdict == "fail"


def test_render_is_fast(out_dir):
    t = time.perf_counter()
    render_reports(out_dir)
    assert time.perf_counter() - t < 10


def test_saturated_confidences_get_a_logit_axis(out_dir):
    """A saturated model's confidences (0.99999…, some exactly 1.0 in float32) would all sit at "1.0000" on a
    linear axis; they get a logit axis with the 1.0s drawn just inside it, and the plot still renders."""
    import pandas as pd

    from audit.report.plots import confidence_axis
    sat = pd.Series([0.999991, 0.9999999, 1.0, 0.99997, float("nan")])
    drawn, logit = confidence_axis(sat)
    assert logit and drawn.iloc[2] == pytest.approx(1 - 1e-7) and drawn.iloc[0] == sat.iloc[0]
    plain = pd.Series([0.55, 0.91, 0.999, 0.62])
    drawn, logit = confidence_axis(plain)
    assert not logit and drawn.equals(plain)
    pi = pd.read_csv(out_dir / "per_image.csv")
    pi["confidence"] = 1.0 - np.linspace(0, 1e-6, len(pi))
    pi.to_csv(out_dir / "per_image.csv", index=False)
    p = render_reports(out_dir)["plot_fraction_vs_confidence"]
    assert np.asarray(Image.open(p).convert("L")).std() > 5


def test_gallery_note_names_lost_masks_not_absent_artifacts(out_dir):
    """An artifact that is simply not on the image gets no note under its overlay; a target whose mask file is
    gone is named with the reason."""
    import pandas as pd

    from audit.report.inputs import read_out_dir
    inp = read_out_dir(out_dir)
    inp.region_cfg, inp._regions = {"lesion": {"source": "file"}, "ink": {}}, None
    row = pd.read_csv(out_dir / "per_image.csv").iloc[0].to_dict()
    row["mask"] = str(out_dir / "no_such_mask.png")
    grid, masks, note = inp.load(row)
    assert grid is not None and masks["lesion"] is None and masks["ink"] is None   # a flat test image: no ink
    assert note == "lesion missing (mask file not found)"


def test_gallery_says_which_shortcut_its_overlays_do_not_show(out_dir):
    s = json.loads((out_dir / "summary.json").read_text())
    s["counterfactual"] = {"regions": {}, "hidden": [{"region": "ruler", "text": "removing ruler changes 40% of it"}]}
    (out_dir / "summary.json").write_text(json.dumps(complete(s)))
    md = render_reports(out_dir, n_per_group=1)["gallery_md"].read_text(encoding="utf-8")
    text = s["counterfactual"]["hidden"][0]["text"]
    line = next(ln for ln in md.splitlines() if text in ln)          # the region and its text, before the groups
    assert "ruler" in line.split(text)[0] and md.index(text) < md.index("\n## ")
    s["counterfactual"]["hidden"] = []
    (out_dir / "summary.json").write_text(json.dumps(complete(s)))
    plain = render_reports(out_dir, n_per_group=1)["gallery_md"].read_text(encoding="utf-8")
    assert text not in plain and len(plain.split("\n## ")[0]) < len(md.split("\n## ")[0])   # the paragraph is gone


def test_map_concentration_known_answers():
    """Peak share = max cell / Σ; entropy = −Σ p log p / log(h·w) (hand-computed)."""
    import warnings

    from audit.cam import map_concentration
    from audit.errors import UndefinedMetricWarning
    c = np.zeros((4, 2, 2))
    c[0, 0, 0] = 5.0                                  # one cell: share 1, entropy 0
    c[1] = 3.0                                        # flat: share 1/4, entropy 1
    c[2] = [[1, 1], [1, 0]]                           # three equal cells: 1/3, log 3 / log 4
    with pytest.warns(UndefinedMetricWarning, match="1 of 4 maps are all zero"):
        peak, ent = map_concentration(c)              # c[3]: all zero → NaN
    np.testing.assert_allclose(peak[:3], [1.0, 0.25, 1 / 3])
    np.testing.assert_allclose(ent[:3], [0.0, 1.0, math.log(3) / math.log(4)])
    assert math.isnan(peak[3]) and math.isnan(ent[3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p1, e1 = map_concentration(np.array([[-2.0, 2.0], [0.0, 0.0]]))   # negatives clipped: one cell
    assert p1[0] == 1.0 and e1[0] == 0.0


def test_overlays_carry_no_caption_and_near_flat_maps_say_so(out_dir):
    """#26: captions were burned into the PNG (and repeated in the HTML): the PNG is now the picture only.
    A near-flat map (15 cells of 1.0, one of 1.1) is painted as red as a focused one after the per-image
    min-max; its peak share 1.1/16.1 = 7% (flat 6%) and entropy 1.00 say it is flat."""
    z = dict(np.load(out_dir / "cams.npz"))
    z["cam"][0] = 1.0
    z["cam"][0][0, 0] = 1.1                           # img_a
    np.savez_compressed(out_dir / "cams.npz", **z)
    paths = render_reports(out_dir, n_per_group=2)
    im = Image.open(out_dir / "gallery" / "confident_errors" / "01_img_a.png")
    assert im.size == (224, 224)                      # 32 px grid enlarged ×7; no caption strip below
    import html

    from audit.report.gallery import CONCENTRATION_LEGEND, concentration_text
    page = paths["html"].read_text(encoding="utf-8")
    from audit.cam import map_concentration
    peaks, ents = map_concentration(z["cam"][:1])
    peak, ent = float(peaks[0]), float(ents[0])
    assert peak == pytest.approx(1.1 / 16.1, rel=1e-5) and ent > 0.99              # near flat
    flat = concentration_text(peak, ent, 16)
    assert "7%" in flat and "6%" in flat and "1.00" in flat                          # its numbers, as shown
    assert flat in page
    assert concentration_text(1.0, 0.0, 16) in page                                 # img_b: one cell
    assert html.escape(CONCENTRATION_LEGEND) in page
    assert page.count("Pred benign (0.92) · True melanoma") == 2                          # text, in 2 groups
    md = paths["gallery_md"].read_text(encoding="utf-8")
    assert _gallery_rows(md)["confident_errors"][0][7] == concentration_text(peak, ent, 16, head="")


def test_plot_fixes_of_the_newcomer_review(out_dir, monkeypatch):
    """#26 §1 plots: the reliability gap is a hatched outline (no filled bar in a colour the legend lacks), the
    ROC title wraps instead of being cut off, the counterfactual title counts region edits, and no title line
    is wider than its figure."""
    from matplotlib.patches import Rectangle

    import audit.report.plots as plots
    figs = {}
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.setdefault(Path(path).stem, fig) and real(fig, path))
    render_reports(out_dir)
    ax = figs["reliability"].axes[0]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    gap = [p for p in bars if p.get_hatch() == "///"]
    assert gap and all(not p.get_fill() for p in gap)                      # outline only: nothing painted over
    assert all(p.get_fill() for p in bars if p.get_hatch() != "///")       # the accuracy bars themselves
    assert "gap to mean confidence" in [t.get_text() for t in ax.get_legend().get_texts()]
    roc_title = figs["roc"].axes[0].get_title()
    assert "operating points tuned by" in roc_title and all(len(line) <= 75 for line in roc_title.splitlines())
    cf_title = figs["counterfactual"].axes[0].get_title()
    assert "region edits" in cf_title and "edited images" not in cf_title
    for name, fig in figs.items():            # every title fits the figure's width once drawn
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        for a in fig.axes:
            t = a.title.get_window_extent(r)
            assert t.x0 >= -1 and t.x1 <= fig.bbox.width + 1, name
