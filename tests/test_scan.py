"""`audit.scan`: known-answer prevalence, odds ratio, Fisher p and Cramér's V on synthetic ink strokes; split
leakage by id and by perceptual hash; unreadable images; --by tables; model metrics with vs without artifacts."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import yaml
from PIL import Image, ImageDraw
from rich.console import Console

from audit.errors import ConfigError, ManifestError, UndefinedMetricWarning
from audit.manifest import load_manifest
from audit.preprocess import InputSpec
from audit.scan import (cramers_v, hamming, odds_ratio_2x2, phash_images, render_scan, run_scan,
                        scan_input_spec)

S = 128
SPEC = InputSpec(size=S)
PRESET = {"input": {"size": S}, "regions": {"ink": {}, "dark_corners": {}, "border": {"width": 0.08}}}


def skin_lesion(seed: int) -> np.ndarray:
    """A smooth synthetic dermoscopy-like image: tinted skin with a gradient and a brown ellipse, varied by seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:S, 0:S] / S
    ang = rng.uniform(0, 2 * np.pi)
    grad = (np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5)) * rng.uniform(20, 50)
    img = np.empty((S, S, 3), np.float32)
    img[:] = np.array([214, 168, 150]) + rng.normal(0, 8, 3)
    img += grad[..., None]
    cy, cx = rng.uniform(0.3, 0.7, 2)
    ry, rx = rng.uniform(0.1, 0.25, 2)
    ell = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    img[ell] = np.array([120, 80, 60]) + rng.normal(0, 10, 3)
    img += rng.normal(0, 2, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def with_ink(img: np.ndarray) -> np.ndarray:
    im = Image.fromarray(img)
    ImageDraw.Draw(im).arc([20, 20, 108, 108], 200, 330, fill=(110, 60, 150), width=3)
    return np.asarray(im)


def make_set(tmp_path, n_mel=10, n_nv=10, ink_mel=8, ink_nv=1, extra: dict | None = None) -> pd.DataFrame:
    """20 images: ink on the first `ink_mel` mel and `ink_nv` nv images; sites alternate a/b; a 'drawn' column."""
    d = tmp_path / "imgs"
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n_mel + n_nv):
        mel = k < n_mel
        ink = (k < ink_mel) if mel else (k - n_mel < ink_nv)
        img = skin_lesion(k)
        if ink:
            img = with_ink(img)
        p = d / f"im{k:02d}.png"
        Image.fromarray(img).save(p)
        rows.append({"image": str(p), "label": "mel" if mel else "nv", "split": "train" if k % 2 else "test",
                     "site": "a" if k % 2 == 0 else "b", "drawn": int(ink), "lesion_id": f"L{k:02d}"})
    df = pd.DataFrame(rows)
    for k, v in (extra or {}).items():
        df[k] = v
    csv = tmp_path / "m.csv"
    df.to_csv(csv, index=False)
    return load_manifest(csv)


@pytest.fixture(scope="module")
def ink_scan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scan")
    df = make_set(tmp)
    res = run_scan(PRESET, df, tmp / "out", SPEC, by=["site"], id_col="lesion_id", flag_cols=["drawn"])
    return df, res


# ------------------------------------------------------------------------------------------------ known answers

def test_detector_flags_match_the_drawn_ink(ink_scan):
    df, res = ink_scan
    pi = res.per_image
    assert pi["present_ink"].tolist() == pi["drawn"].astype(int).astype(bool).tolist()
    assert "present_border" not in pi  # geometric band: nothing to detect
    assert res.summary["skipped_regions"]["border"].startswith("geometric")


def test_prevalence_odds_ratio_fisher_known_values(ink_scan):
    _, res = ink_scan
    a = res.summary["artifacts"]["ink"]
    assert a["by_label"]["mel"]["value"] == 0.8 and a["by_label"]["mel"]["k"] == 8
    assert a["by_label"]["nv"]["value"] == 0.1 and a["by_label"]["nv"]["n"] == 10
    assert a["prevalence"]["value"] == pytest.approx(9 / 20)
    (e,) = [x for x in res.summary["associations"] if x["artifact"] == "ink"]
    assert e["class"] == "mel" and e["vs"] == "nv"  # binary label without --positive: the minority (tie → first)
    assert e["table"] == [[8, 2], [1, 9]]
    assert e["odds_ratio"]["value"] == pytest.approx((8 * 9) / (2 * 1))  # 36
    assert e["odds_ratio"]["p"] == pytest.approx(scipy.stats.fisher_exact([[8, 2], [1, 9]])[1])
    lor, se = math.log(36), math.sqrt(1 / 8 + 1 / 2 + 1 + 1 / 9)
    assert e["odds_ratio"]["lo"] == pytest.approx(math.exp(lor - 1.959964 * se), rel=1e-5)
    assert e["odds_ratio"]["hi"] == pytest.approx(math.exp(lor + 1.959964 * se), rel=1e-5)
    assert "80% of mel" in e["text"] and "10% of nv" in e["text"] and "OR 36.0" in e["text"]
    # the metadata flag column gives the same analysis (it marks exactly the drawn images)
    (f,) = [x for x in res.summary["associations"] if x["artifact"] == "drawn"]
    assert f["odds_ratio"]["value"] == pytest.approx(36)


def test_cramers_v_against_hand_computation(ink_scan):
    _, res = ink_scan
    a, b, c, d = 8, 2, 1, 9
    n = a + b + c + d
    chi2 = n * (a * d - b * c) ** 2 / ((a + b) * (c + d) * (a + c) * (b + d))
    cv = res.summary["artifacts"]["ink"]["label_association"]
    assert cv["chi2"] == pytest.approx(chi2)
    assert cv["uncorrected"] == pytest.approx(math.sqrt(chi2 / n)) == pytest.approx(0.7035, abs=1e-4)
    # Bergsma's correction by hand: φ² = 9.899/20 = 0.49495, minus 1·1/19 → 0.44232; r̃ − 1 = 1 − 1/19 = 0.94737
    assert cv["value"] == pytest.approx(math.sqrt((chi2 / n - 1 / 19) / (1 - 1 / 19))) == pytest.approx(0.6833,
                                                                                                      abs=1e-4)
    # expected counts 4.5 / 5.5: too sparse for the χ² distribution → the exact conditional p, by Monte Carlo
    assert cv["p_method"] == "monte carlo" and "Monte Carlo" in cv["note"]
    exact = _exact_conditional_p(np.array([[a, b], [c, d]]))
    assert abs(cv["p"] - exact) < 4 * math.sqrt(exact * (1 - exact) / 4000) + 1 / 4001
    assert cv["p"] != pytest.approx(scipy.stats.chi2.sf(chi2, 1), rel=0.2)  # the approximation was far off
    # 3 × 2 by hand: V = sqrt(χ² / (n (min(r, c) − 1))); corrected: φ² − 2·1/29 over min(3 − 4/29, 2 − 1/29) − 1
    t = np.array([[5, 5], [2, 8], [9, 1]])
    exp = t.sum(1, keepdims=True) * t.sum(0, keepdims=True) / t.sum()
    x2 = ((t - exp) ** 2 / exp).sum()
    assert cramers_v(t)["uncorrected"] == pytest.approx(math.sqrt(x2 / t.sum()))
    assert cramers_v(t)["value"] == pytest.approx(math.sqrt((x2 / 30 - 2 / 29) / (1 - 1 / 29)))


def test_corrected_cramers_v_is_near_zero_for_independent_small_groups():
    """6 labels × present/absent at n = 60, independent: the plain V reads about 0.28 on average, the
    bias-corrected one stays near 0 (and never exceeds the plain one)."""
    rng = np.random.default_rng(0)
    plain, corr = [], []
    for _ in range(200):
        lab, art = rng.integers(0, 6, 60), rng.random(60) < 0.3
        cv = cramers_v([[int(((lab == k) & art).sum()), int(((lab == k) & ~art).sum())] for k in range(6)], n_mc=10)
        plain.append(cv["uncorrected"])
        corr.append(cv["value"])
    assert np.mean(plain) > 0.22 and np.mean(corr) < 0.11
    assert all(c <= p + 1e-12 for c, p in zip(corr, plain))


def _exact_conditional_p(t: np.ndarray) -> float:
    """P(χ² ≥ observed) over every r×2 table with the margins of t, each weighted by its multivariate
    hypergeometric probability: the exact test the Monte Carlo p estimates."""
    import itertools
    rows, k, n = t.sum(1), int(t[:, 0].sum()), int(t.sum())
    exp = rows[:, None] * t.sum(0)[None, :] / n
    stat = lambda x: ((x - exp) ** 2 / exp).sum()
    obs, p = stat(t), 0.0
    for col in itertools.product(*(range(int(r) + 1) for r in rows)):
        if sum(col) == k:
            x = np.array([[ci, r - ci] for ci, r in zip(col, rows)])
            if stat(x) >= obs * (1 - 1e-9):
                p += math.prod(math.comb(int(r), ci) for ci, r in zip(col, rows)) / math.comb(n, k)
    return p


@pytest.mark.parametrize("t", [[[2, 0], [3, 14], [1, 30], [0, 25]], [[3, 1], [1, 4], [0, 3]], [[1, 9], [0, 12]]])
def test_sparse_table_p_is_the_exact_conditional_test(t):
    """A group of 2 images, both with the artifact, gives a χ² p of 3e-6 in the first table, about 80 times under
    the exact one (2.6e-4); the Monte Carlo p matches exact enumeration within its sampling error, is seeded, and a
    well-filled table keeps the χ² p."""
    t = np.array(t)
    cv, exact = cramers_v(t), _exact_conditional_p(t)
    if t.shape == (4, 2):
        p_chi2 = scipy.stats.chi2_contingency(t, False)[1]
        assert p_chi2 < 1e-5 and exact == pytest.approx(2.64e-4, rel=0.01) and exact > 50 * p_chi2
    assert cv["p_method"] == "monte carlo"
    assert abs(cv["p"] - exact) < 4 * math.sqrt(exact * (1 - exact) / 4000) + 1 / 4001, (cv["p"], exact)
    assert cramers_v(t)["p"] == cv["p"]                                   # seeded: the same p on a re-run
    full = np.array([[30, 20], [25, 40], [50, 35]])
    cf = cramers_v(full)
    assert cf["p_method"] == "chi2" and cf["p"] == pytest.approx(scipy.stats.chi2_contingency(full, False)[1])


def test_odds_ratio_zero_cell_uses_haldane_anscombe():
    o = odds_ratio_2x2(5, 0, 2, 8)
    assert o["corrected"] and o["value"] == pytest.approx(5.5 * 8.5 / (0.5 * 2.5))
    assert o["p"] == pytest.approx(scipy.stats.fisher_exact([[5, 0], [2, 8]])[1])
    assert o["lo"] < o["value"] < o["hi"]


def test_by_prevalence_table(ink_scan):
    df, res = ink_scan
    g = res.summary["by"]["site"]["ink"]["groups"]
    for site in ("a", "b"):
        m = df["site"] == site
        k = int(df.loc[m, "drawn"].astype(int).sum())
        assert g[site]["k"] == k and g[site]["n"] == int(m.sum()) == 10
        assert g[site]["value"] == pytest.approx(k / 10)


def test_small_groups_are_too_small(tmp_path):
    df = make_set(tmp_path, n_mel=4, n_nv=10, ink_mel=3, ink_nv=1)
    res = run_scan({"regions": {"ink": {}}}, df, tmp_path / "o", SPEC)
    a = res.summary["artifacts"]["ink"]["by_label"]["mel"]
    assert a["too_small"] and a["value"] is None and a["k"] == 3 and a["n"] == 4
    (e,) = res.summary["associations"]
    assert e["too_small"] and e["odds_ratio"]["value"] is None and (e["n_class"], e["n_rest"]) == (4, 10)


# ------------------------------------------------------------------------------------------------ leakage

def test_same_id_in_two_splits_is_found(tmp_path):
    ids = [f"L{k:02d}" for k in range(20)]
    ids[3] = ids[4]        # k=3 is train, k=4 is test → leak
    ids[5] = ids[7]        # both train → no leak
    df = make_set(tmp_path, ink_mel=0, ink_nv=0, extra={"lesion_id": ids})
    res = run_scan({"regions": {"ink": {}}}, df, tmp_path / "o", SPEC, id_col="lesion_id")
    lk = res.summary["leakage"]["ids"]
    assert lk["checked"] and lk["n_leaking"] == 1
    assert lk["leaking"][0]["id"] == "L04" and lk["leaking"][0]["splits"] == ["test", "train"]
    assert (tmp_path / "o" / "leaking_ids.csv").exists()


def test_near_duplicate_across_splits_found_by_phash(tmp_path):
    df = make_set(tmp_path, ink_mel=0, ink_nv=0)
    # image 0 (test) re-saved as a JPEG with slight noise, put in train; image 1 (train) stays a different image
    src = np.asarray(Image.open(df.loc[0, "image"]).convert("RGB")).astype(np.int16)
    noisy = (src + np.random.default_rng(1).integers(-3, 4, src.shape)).clip(0, 255).astype(np.uint8)
    dup = tmp_path / "dup.jpg"
    Image.fromarray(noisy).save(dup, quality=85)
    extra = pd.DataFrame([{"image_id": "dup", "image": str(dup), "label": "mel", "split": "train", "mask": None}])
    df = pd.concat([df, extra], ignore_index=True)
    res = run_scan({"regions": {"ink": {}}}, df, tmp_path / "o", SPEC)
    nd = res.summary["leakage"]["near_duplicates"]
    assert nd["scope"] == "across splits" and nd["threshold"] == 6 and nd["bits"] == 64
    pairs = {frozenset((p["image_id_a"], p["image_id_b"])) for p in nd["pairs"]}
    assert frozenset(("im00", "dup")) in pairs
    assert frozenset(("im01", "dup")) not in pairs and nd["n_pairs"] == 1
    assert (tmp_path / "o" / "near_duplicates.csv").exists()
    # threshold 0: the re-saved copy differs in some bits, or matches exactly; never a different image
    h = {r.image_id: int(r.phash, 16) for r in res.per_image.itertuples()}
    assert hamming(np.uint64(h["im00"]), np.uint64(h["dup"])) <= 6 < hamming(np.uint64(h["im01"]), np.uint64(h["dup"]))


def test_phash_known_answer_and_reference():
    const = np.full((1, 40, 40, 3), 128, np.uint8)
    assert int(phash_images(const)[0]) == 1 << 63  # only the DC coefficient exceeds the median (0)
    # slow reference: PIL luminance + resize, scipy.fftpack DCT (the imagehash recipe), one image at a time
    from scipy import fftpack
    imgs = np.stack([skin_lesion(k) for k in range(6)])
    fast = phash_images(imgs)
    for k, im in enumerate(imgs):
        g = np.asarray(Image.fromarray(im).convert("L").resize((32, 32), Image.BILINEAR), dtype=np.float64)
        c = fftpack.dct(fftpack.dct(g, axis=0), axis=1)[:8, :8]
        bits = (c > np.median(c)).ravel()
        ref = int("".join("1" if b else "0" for b in bits), 2)
        assert hamming(np.uint64(ref), fast[k]) <= 4  # resampling differs slightly between PIL and torch
    d = hamming(fast[:, None], fast[None, :])
    assert (d[~np.eye(6, dtype=bool)] > 6).all()  # distinct images stay apart


# ------------------------------------------------------------------------------------------------ files, errors

def test_unreadable_image_is_skipped_and_listed(tmp_path):
    df = make_set(tmp_path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    extra = pd.DataFrame([{"image_id": "broken", "image": str(bad), "label": "nv", "split": "test", "mask": None},
                          {"image_id": "gone", "image": str(tmp_path / "gone.png"), "label": "nv", "split": "test",
                           "mask": None}])
    df = pd.concat([df, extra], ignore_index=True)
    seen = []
    res = run_scan({"regions": {"ink": {}}}, df, tmp_path / "o", SPEC, progress=lambda d, t: seen.append((d, t)))
    assert res.summary["data"]["n_skipped"] == 2 and res.summary["data"]["n_scanned"] == 20
    err = pd.read_csv(tmp_path / "o" / "errors.csv")
    assert set(err["image_id"]) == {"broken", "gone"} and err["reason"].str.len().gt(0).all()
    assert "broken" not in set(res.per_image["image_id"])
    assert seen[-1] == (22, 22)


def test_outputs_strict_json_csv_and_contact_sheet(ink_scan):
    _, res = ink_scan
    out = res.out_dir
    s = json.loads((out / "scan.json").read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert s["schema_version"] == 2 and s["options"]["phash_threshold"] == 6
    csv = pd.read_csv(out / "scan.csv")
    assert {"image_id", "label", "split", "phash", "score_ink", "present_ink", "present_drawn"} <= set(csv.columns)
    assert csv["phash"].str.len().eq(16).all()
    sheet = Image.open(out / "contact_ink.png")
    assert sheet.width > 0 and s["contact_sheets"]["ink"] == "contact_ink.png"
    assert not (out / "errors.csv").exists()


def test_render_scan_text(ink_scan):
    _, res = ink_scan
    con = Console(width=160, color_system=None, record=True, file=open("/dev/null", "w"))
    render_scan(res, con)
    text = con.export_text()
    assert "Artifact prevalence" in text and "ink" in text and "36.0" in text
    lk = res.summary["leakage"]["ids"]
    leak = next(ln for ln in text.splitlines() if ln.startswith("Split leakage"))    # the id column and its counts
    assert "Prevalence by site" in text and lk["checked"] and "lesion_id" in leak and "0 of 20" in leak
    by = text.split("Prevalence by site", 1)[1].split("Split leakage", 1)[0].split("\n* p by Monte", 1)[0]
    assert _first_cells(by) == ["a", "b", "Cramér's V", "(95% CI), p"]   # groups as rows, then V over its p


def _first_cells(block: str) -> list[str]:
    """The first cell of each body row of a rich SIMPLE_HEAD table (the lines after its ─ rule)."""
    lines = block.splitlines()
    rule = next(i for i, ln in enumerate(lines) if ln.strip() and set(ln.strip()) == {"─"})
    return [ln.strip().split("  ")[0] for ln in lines[rule + 1:] if ln.strip()]


def test_by_table_lists_groups_largest_first_and_counts_the_hidden():
    from audit.scan import scan_renderable
    est = lambda n: {"value": 0.5, "lo": 0.3, "hi": 0.7, "n": n, "too_small": n < 10, "k": n // 2}
    sizes = {f"g{i:02d}": 100 - 5 * i for i in range(15)}
    s = {"data": {"n_scanned": 1, "n_rows": 1, "n_skipped": 0, "label_counts": {}, "classes": []},
         "options": {"min_n": 10}, "artifacts": {}, "associations": [],
         "by": {"site": {"ink": {"groups": {g: est(n) for g, n in sorted(sizes.items(), reverse=True)},
                                 "association": {"value": 0.3, "p": 0.01, "p_method": "monte carlo"}}}},
         "leakage": {"ids": {"checked": False, "note": "n/a"},
                     "near_duplicates": {"scope": "", "threshold": 6, "bits": 64, "n_pairs": 0, "pairs": []}}}
    con = Console(width=100, color_system=None, record=True, file=open("/dev/null", "w"))
    con.print(scan_renderable(s, max_rows=12))
    text = con.export_text()
    by = text.split("Prevalence by site", 1)[1].split("\n3 smaller site group", 1)[0]
    assert _first_cells(by) == [f"g{i:02d}" for i in range(12)] + ["Cramér's V", "(95% CI), p"]
    flat = " ".join(text.split())                  # the wording: tests/golden/scan_by_table.txt
    hidden = flat.split("Cramér's V", 1)[1]
    assert "g12, g13, g14" in hidden and f"{sizes['g12'] + sizes['g13'] + sizes['g14']} images" in hidden
    assert "0.30" in text and "p 0.01*" in text and "Monte Carlo" in hidden   # V, its p, how p was computed
    from conftest import assert_golden
    assert_golden("scan_by_table.txt", text)


def test_scan_text_quotes_comma_labels_groups_small_comparisons_and_omits_absent_splits():
    from audit.scan import scan_renderable
    small = lambda a, c: {"artifact": a, "class": c, "too_small": True}
    pair = {"image_id_a": "x1", "split_a": "<missing>", "image_id_b": "x2", "split_b": "<missing>", "distance": 4}
    s = {"data": {"n_scanned": 12, "n_rows": 12, "n_skipped": 0, "label_counts": {"ARDS": 4, "COVID-19, ARDS": 8},
                  "classes": ["ARDS", "COVID-19, ARDS"]},
         "options": {"min_n": 10}, "artifacts": {},
         "associations": [small("device", "ARDS"), small("device", "COVID-19, ARDS"), small("text", "ARDS")],
         "leakage": {"ids": {"checked": False, "note": "n/a"},
                     "near_duplicates": {"scope": "within the set (no splits)", "threshold": 6, "bits": 64,
                                         "n_pairs": 1, "pairs": [pair]}}}
    con = Console(width=300, color_system=None, record=True, file=open("/dev/null", "w"))
    con.print(scan_renderable(s))
    text = con.export_text()
    assert "labels ARDS 4, 'COVID-19, ARDS' 8" in text
    small_line = next(ln for ln in text.splitlines() if "device: " in ln)   # the small comparisons, by artifact
    assert "3 " in small_line and "< 10" in small_line
    assert "device: ARDS, 'COVID-19, ARDS'; text: ARDS" in small_line        # a comma label quoted
    assert "\n  x1 ~ x2: Hamming 4" in text and "<missing>" not in text
    s["leakage"]["near_duplicates"].update(scope="across splits", pairs=[dict(pair, split_a="train", split_b="test")])
    con = Console(width=300, color_system=None, record=True, file=open("/dev/null", "w"))
    con.print(scan_renderable(s))
    assert "x1 (train) ~ x2 (test): Hamming 4" in con.export_text()


@pytest.mark.filterwarnings("ignore::audit.errors.UndefinedMetricWarning")  # V undefined: one label known
@pytest.mark.parametrize("absent_when_empty", [False, True])
def test_file_region_presence_in_the_scan(tmp_path, absent_when_empty):
    """Images 0-3 carry a mask with the artifact, 4-5 an all-zero mask, the rest no mask file (empty column)."""
    df = make_set(tmp_path, n_mel=10, n_nv=10, ink_mel=0, ink_nv=0)
    paths = []
    for k in range(20):
        if k >= 6:
            paths.append(None)
            continue
        m = np.zeros((S, S), np.uint8)
        if k < 4:
            m[:16, :32] = 255  # 512 of 16,384 pixels
        p = tmp_path / f"patch{k}.png"
        Image.fromarray(m).save(p)
        paths.append(str(p))
    df = df.assign(patch_mask=paths)
    opts = {"source": "file", "column": "patch_mask", "absent_when_empty": absent_when_empty}
    res = run_scan({"regions": {"patches": opts}}, df, tmp_path / "o", SPEC)
    pi = res.per_image
    assert pi["present_patches"].iloc[:6].tolist() == [True] * 4 + [False] * 2
    np.testing.assert_allclose(pi["score_patches"].iloc[:6], [512 / S ** 2] * 4 + [0, 0])
    e = res.summary["artifacts"]["patches"]
    if absent_when_empty:
        assert pi["present_patches"].iloc[6:].eq(False).all() and (e["n_known"], e["n_present"]) == (20, 4)
    else:
        assert pi["present_patches"].iloc[6:].isna().all() and (e["n_known"], e["n_present"]) == (6, 4)
        assert e["n_unknown"] == 14


def test_interrupted_scan_keeps_the_rows_scanned(tmp_path):
    df = make_set(tmp_path)

    def stop(done, total):
        if done >= 8:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_scan({"regions": {"ink": {}}}, df, tmp_path / "o", SPEC, batch_size=4, progress=stop)
    part = pd.read_csv(tmp_path / "o" / "scan.partial.csv")
    assert list(part["image_id"]) == list(df["image_id"][:8]) and "score_ink" in part
    run_scan({"regions": {"ink": {}}}, df, tmp_path / "o", SPEC, batch_size=4)
    assert not (tmp_path / "o" / "scan.partial.csv").exists() and (tmp_path / "o" / "scan.csv").exists()


def test_workers_give_the_same_table(tmp_path):
    df = make_set(tmp_path)
    a = run_scan({"regions": {"ink": {}}}, df, tmp_path / "a", SPEC, workers=0).per_image
    b = run_scan({"regions": {"ink": {}}}, df, tmp_path / "b", SPEC, workers=2).per_image
    pd.testing.assert_frame_equal(a, b)


# ------------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kw, exc, words", [
    ({"by": ["nope"]}, ManifestError, "by column 'nope'"),
    ({"id_col": "patient"}, ManifestError, "id_col 'patient'"),
    ({"flag_cols": ["label"]}, ManifestError, "expected 0/1"),
    ({"phash_threshold": 65}, ConfigError, "phash_threshold"),
    ({"positive": "bcc"}, ConfigError, "positive 'bcc'"),
])
def test_bad_input_one_line(tmp_path, kw, exc, words):
    df = make_set(tmp_path, n_mel=2, n_nv=2, ink_mel=0, ink_nv=0)
    with pytest.raises(exc) as ei:
        run_scan({"regions": {"ink": {}}}, df, tmp_path / "o", SPEC, **kw)
    assert words in str(ei.value) and "\n" not in str(ei.value)


def test_no_label_and_nothing_to_scan(tmp_path):
    df = make_set(tmp_path, n_mel=2, n_nv=2, ink_mel=0, ink_nv=0)
    with pytest.raises(ManifestError, match="no label column"):
        run_scan({"regions": {"ink": {}}}, df.assign(label=pd.NA), tmp_path / "o", SPEC)
    with pytest.raises(ConfigError, match="nothing to scan"):
        run_scan({"regions": {"border": {}}}, df, tmp_path / "o", SPEC)
    assert scan_input_spec({"input": {"size": 96}}).size == 96


# ------------------------------------------------------------------------------------------------ ScanConfig

def test_scan_config_precedence_argument_over_preset_over_default():
    """Each option from the highest-ranking place that sets it: the argument, else the preset's `scan:` section,
    else the default; None and an empty list mean "not given"."""
    from audit.scan import ScanConfig
    pre = {"scan": {"min_n": 3, "top_k": 5, "by": ["site"], "id_col": "lesion_id"}}
    c = ScanConfig.resolve(pre, top_k=2, by=[], id_col=None, phash_threshold=9, seed=7)
    assert (c.top_k, c.phash_threshold, c.seed) == (2, 9, 7)                      # argument
    assert (c.min_n, c.by, c.id_col) == (3, ["site"], "lesion_id")                 # preset
    assert (c.detail_threshold, c.n_boot, c.alpha, c.workers, c.flag_cols) == (48, 1000, 0.05, 0, [])  # default
    assert ScanConfig.resolve(None) == ScanConfig() and ScanConfig.resolve({"scan": None}) == ScanConfig()
    assert ScanConfig.resolve(pre, by=["split"]).by == ["split"]
    assert ScanConfig(**c.to_dict()) == c and json.loads(json.dumps(c.to_dict())) == c.to_dict()
    assert ScanConfig(workers=np.int64(2)).to_dict()["workers"] == 2 and type(ScanConfig(workers=np.int64(2)).workers) is int


@pytest.mark.parametrize("key, value", [("top_k", -1), ("phash_threshold", 70), ("workers", "x"), ("min_n", 0),
                                        ("detail_threshold", 257), ("limit", 0), ("alpha", 1.5), ("batch_size", 0),
                                        ("device", "gpu"), ("n_boot", 0), ("seed", -1), ("by", "site"),
                                        ("flag_cols", [1]), ("id_col", 3), ("workers", True)])
def test_scan_config_bad_option_names_the_parameter(tmp_path, key, value):
    from audit.scan import ScanConfig
    for make in (lambda: ScanConfig(**{key: value}), lambda: ScanConfig.resolve({}, **{key: value})):
        with pytest.raises(ConfigError) as ei:
            make()
        msg = str(ei.value)
        assert ei.value.param == key and msg.startswith(f"{key}: expected") and repr(value) in msg
        assert "\n" not in msg


def test_run_scan_options_and_config_are_checked_before_any_work(tmp_path):
    from audit.scan import ScanConfig
    df = make_set(tmp_path, n_mel=2, n_nv=2, ink_mel=0, ink_nv=0)
    with pytest.raises(ConfigError) as ei:
        run_scan({"regions": {"ink": {}}}, df, tmp_path / "o", SPEC, top_k=-1)
    assert ei.value.param == "top_k" and not (tmp_path / "o").exists()
    with pytest.raises(TypeError, match="bogus"):
        run_scan({"regions": {"ink": {}}}, df, tmp_path / "o", SPEC, bogus=1)
    with pytest.raises(TypeError, match="top_k"):
        run_scan({"regions": {"ink": {}}}, df, tmp_path / "o", SPEC, ScanConfig(), top_k=3)
    with pytest.raises(TypeError, match="ScanConfig"):
        run_scan({"regions": {"ink": {}}}, df, tmp_path / "o", SPEC, ["site"])


@pytest.mark.parametrize("flag, value", [("--phash-threshold", "70"), ("--workers", "-1"), ("--limit", "0"),
                                         ("--detail-threshold", "300")])
def test_cli_scan_bad_option_exits_2_naming_the_flag(tmp_path, capsys, flag, value):
    import cli
    make_set(tmp_path, n_mel=2, n_nv=2, ink_mel=0, ink_nv=0)
    preset = tmp_path / "p.yaml"
    preset.write_text("regions:\n  ink: {}\n")
    rc = cli.main(["scan", "--data", str(tmp_path / "m.csv"), "--config", str(preset), "--out", str(tmp_path / "o"),
                   "--quiet", flag, value])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"error: {flag}: expected") and value in err and "\n" not in err
    assert not (tmp_path / "o" / "scan.json").exists()


def test_scan_json_carries_the_resolved_config(ink_scan, tmp_path):
    from audit.scan import ScanConfig

    def config(s: dict) -> dict:  # scan.json's options, less the hash widths and the run dir
        return {k: v for k, v in s["options"].items() if k not in ("phash_bits", "detail_bits", "run_dir")}

    _, res = ink_scan
    want = dict(ScanConfig().to_dict(), by=["site"], id_col="lesion_id", flag_cols=["drawn"])
    assert config(res.summary) == want
    assert config(json.loads((res.out_dir / "scan.json").read_text())) == want
    # preset `scan:` values and the positive class used (the preset's audit.positive) land there too
    df = make_set(tmp_path, n_mel=3, n_nv=3, ink_mel=1, ink_nv=1)
    pre = {"regions": {"ink": {}}, "scan": {"min_n": 2, "top_k": 4}, "audit": {"positive": "mel"}}
    got = config(run_scan(pre, df, tmp_path / "o", SPEC, top_k=0, n_boot=20).summary)
    assert got == dict(ScanConfig().to_dict(), min_n=2, top_k=0, n_boot=20, positive="mel")
    assert ScanConfig(**got).top_k == 0 and not list((tmp_path / "o").glob("contact_*.png"))



def test_prepare_scan_names_the_file_and_its_columns_without_a_label(tmp_path):
    from audit.scan import prepare_scan
    make_set(tmp_path, n_mel=1, n_nv=1, ink_mel=0, ink_nv=0)
    csv = tmp_path / "m.csv"
    pd.read_csv(csv).rename(columns={"label": "dx"}).to_csv(csv, index=False)
    preset = tmp_path / "p.yaml"
    preset.write_text("regions: {ink: {}}\n")
    with pytest.raises(ManifestError) as ei:
        prepare_scan(csv, preset)
    msg = str(ei.value)
    assert msg.startswith(f"{csv}: no label column") and "'dx'" in msg and "'label'" not in msg and "\n" not in msg
    assert set(prepare_scan(csv, preset, label_col="dx")[1]["label"]) == {"mel", "nv"}


# ------------------------------------------------------------------------------------------------ with a model

def test_model_metrics_with_and_without_artifact(tiny_run, tmp_path):
    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    cfg["classes"], cfg["model"]["num_classes"] = ["mel", "nv", "bkl"], 3
    cfg["positive_class"] = "mel"
    (tiny_run / "config.yaml").write_text(yaml.safe_dump(cfg))
    df = make_set(tmp_path)
    spec = InputSpec(size=64)  # the run's input: inference in the same pass as the scan
    df = df.assign(f=[0, 1] * 10)
    res = run_scan({"regions": {"ink": {}}}, df, tmp_path / "o", spec, run_dir=str(tiny_run), flag_cols=["f"],
                   min_n=2, n_boot=50)
    mo = res.summary["model"]
    assert mo["positive"] == "mel" and mo["inference"] == "same pass as the scan"
    e = mo["by_artifact"]["ink"]
    assert e["with"]["n"] + e["without"]["n"] == 20
    for st in ("with", "without"):
        for k in ("accuracy", "sensitivity", "specificity", "mean_p_positive_neg"):
            x = e[st][k]
            if x["n"] < 2:  # the one inked nevus: below min_n, reported as too small with its n
                assert x["too_small"] and x["value"] is None
                continue
            assert x["lo"] is not None and x["hi"] is not None and x["lo"] <= x["value"] <= x["hi"]
    assert e["with"]["sensitivity"]["n"] == 8 and e["without"]["sensitivity"]["n"] == 2
    assert e["with"]["specificity"]["n"] == 1 and e["without"]["specificity"]["n"] == 9
    assert e["with"]["mean_p_positive_neg"]["too_small"] and e["diff_mean_p_positive_neg"]["too_small"]
    assert "specificity for mel" in e["text"]
    # a flag in half of the negatives: mean P(mel) of negatives with − without, bootstrap CI, Mann–Whitney p
    d = mo["by_artifact"]["f"]["diff_mean_p_positive_neg"]
    assert d["n"] == 10 and d["lo"] <= d["value"] <= d["hi"] and 0 <= d["p"] <= 1
    assert {"pred", "confidence", "p_mel", "p_nv", "p_bkl"} <= set(res.per_image.columns)
    # another grid than the run's: a separate inference pass gives the same probabilities
    res2 = run_scan({"regions": {"ink": {}}}, df, tmp_path / "o2", InputSpec(size=S), run_dir=str(tiny_run),
                    min_n=2, n_boot=50)
    assert res2.summary["model"]["inference"].startswith("separate")
    np.testing.assert_allclose(res2.per_image["p_mel"], res.per_image["p_mel"], atol=1e-5)


def test_p_values_that_underflow_do_not_read_zero():
    from audit.association import fmt_p, one_vs_rest
    from audit.scan.render import fmt_v
    assert fmt_p(0.0) == "< 1e-300" and fmt_p(3.14e-6) == "3.1e-06" and fmt_p(None) == "—"
    assert fmt_v({"value": 0.7, "p": 0.0}) == "0.70\np < 1e-300"
    assert fmt_v({"value": 0.7, "lo": 0.61, "hi": 0.79, "p": 3e-6, "p_method": "monte carlo"}) == \
        "0.70 [0.61,0.79]\np 3e-06*"
    lab = np.array(["mel"] * 500 + ["nv"] * 4000)
    pres = np.array([True] * 480 + [False] * 20 + [True] * 100 + [False] * 3900)
    e = one_vs_rest(lab, pres, "ink", ["mel", "nv"], "mel", min_n=10, alpha=0.05)[0]
    assert e["odds_ratio"]["p"] == 0.0 and "Fisher p < 1e-300" in e["text"]


@pytest.mark.parametrize("sec,tokens", [({"min_n": "lots"}, ["scan.min_n", "positive integer", "lots"]),
                                        ({"top_k": -1}, ["scan.top_k", "≥ 0", "-1"]),
                                        ({"by": "site"}, ["scan.by", "list", "site"]),
                                        ({"id_col": 3}, ["scan.id_col", "column name", "3"])])
def test_scan_section_values_are_checked(tmp_path, sec, tokens):
    from audit.config import load_preset
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"regions": {"ink": {}}, "scan": sec}))
    with pytest.raises(ConfigError) as ei:
        load_preset(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: ") and "\n" not in msg and all(t in msg for t in tokens), (msg, tokens)


def test_scan_top_k_zero_is_allowed(tmp_path):
    """top_k: 0 turns the contact sheets off (the preset check must not refuse what the scan supports)."""
    from audit.config import load_preset
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"regions": {"ink": {}}, "scan": {"top_k": 0, "min_n": 3}}))
    assert load_preset(p)["scan"]["top_k"] == 0


def test_near_duplicate_pairs_say_when_their_ids_or_labels_differ(tmp_path):
    """One picture under two patient ids defeats a split by id, and under two labels one label is wrong: each
    pair names both, and the counts are in scan.json and the terminal (cxr_covid_v7 holds such pairs)."""
    from rich.console import Console

    from audit.scan import scan_renderable
    df = make_set(tmp_path, ink_mel=0, ink_nv=0, extra={"lesion_id": [f"L{k:02d}" for k in range(20)]})
    other = "nv" if df.loc[0, "label"] == "mel" else "mel"
    extra = pd.DataFrame([{"image_id": "dup", "image": df.loc[0, "image"], "label": other, "split": "train",
                           "mask": None, "lesion_id": "L99"},
                          {"image_id": "dup2", "image": df.loc[1, "image"], "label": df.loc[1, "label"],
                           "split": "test" if df.loc[1, "split"] == "train" else "train", "mask": None,
                           "lesion_id": df.loc[1, "lesion_id"]}])
    df = pd.concat([df, extra], ignore_index=True)
    res = run_scan({"regions": {"ink": {}}}, df, tmp_path / "o", SPEC, id_col="lesion_id")
    nd = res.summary["leakage"]["near_duplicates"]
    by_pair = {frozenset((p["image_id_a"], p["image_id_b"])): p for p in nd["pairs"]}
    p = by_pair[frozenset(("im00", "dup"))]
    assert p["distance"] == 0 and {p["id_a"], p["id_b"]} == {"L00", "L99"}
    assert {p["label_a"], p["label_b"]} == {"mel", "nv"}
    q = by_pair[frozenset(("im01", "dup2"))]                      # same lesion, same label: nothing to say
    assert q["id_a"] == q["id_b"] == "L01" and q["label_a"] == q["label_b"]
    assert nd["id_col"] == "lesion_id" and nd["n_different_ids"] == 1 and nd["n_different_labels"] == 1
    con = Console(width=200, color_system=None, force_terminal=False, record=True)
    con.print(scan_renderable(res.summary))
    text = con.export_text()
    nd_line = next(ln for ln in text.splitlines() if "under different" in ln)   # both counts, and the id column
    assert "1 under different lesion_id" in nd_line and "1 with different labels" in nd_line
    a, b = (p["id_a"], p["id_b"])
    la, lb = (p["label_a"], p["label_b"])
    assert f"Hamming 0 · lesion_id {a} ≠ {b} · labels {la} ≠ {lb}" in text
    line = next(ln for ln in text.splitlines() if "dup2" in ln)
    assert line.rstrip().endswith("Hamming 0")
    # without --id-col: no id comparison, labels still compared
    nd2 = run_scan({"regions": {"ink": {}}}, df, tmp_path / "o2", SPEC).summary["leakage"]["near_duplicates"]
    assert nd2["id_col"] is None and nd2["n_different_ids"] is None and nd2["n_different_labels"] == 1
    assert "id_a" not in nd2["pairs"][0]


@pytest.mark.filterwarnings("ignore::audit.errors.UndefinedMetricWarning")  # no ink anywhere: V undefined
def test_id_leakage_not_checked_says_why(tmp_path):
    df = make_set(tmp_path, ink_mel=0, ink_nv=0, extra={"lesion_id": [f"L{k:02d}" for k in range(20)]})
    ids = run_scan({"regions": {"ink": {}}}, df.assign(split=None), tmp_path / "o", SPEC,  # as load_manifest gives it
                   id_col="lesion_id").summary["leakage"]["ids"]
    assert not ids["checked"] and ids["note"] == "the manifest has no split column"
    ids = run_scan({"regions": {"ink": {}}}, df.assign(split="train"), tmp_path / "o", SPEC,
                   id_col="lesion_id").summary["leakage"]["ids"]
    assert not ids["checked"] and ids["note"] == "every image is in split 'train'"


def _layout_twin(seed: int) -> np.ndarray:
    """A 224-px image: one broad low-frequency layout (the same for every seed) plus a fine texture drawn with
    `seed`. Two seeds: the same 64-bit pHash (it sees the layout), 76 of 256 detail bits apart (the texture)."""
    from scipy import ndimage as ndi
    low = ndi.gaussian_filter(np.random.default_rng(0).normal(0, 1, (224, 224)), 20)
    tex = ndi.gaussian_filter(np.random.default_rng(seed).normal(0, 1, (224, 224)), 2)
    a = np.clip(128 + low / low.std() * 40 + tex / tex.std() * 4, 0, 255).astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=2)


def test_detail_hash_known_answer_and_reference():
    from scipy import fftpack

    from audit.scan import detail_hash_images
    flat = detail_hash_images(np.full((1, 50, 50, 3), 77, np.uint8))
    assert flat.shape == (1, 4) and flat[0].tolist() == [1 << 63, 0, 0, 0]     # the DC bit alone
    imgs = np.stack([_layout_twin(1), np.asarray(Image.fromarray(skin_lesion(3)).resize((224, 224)))])
    fast = detail_hash_images(imgs)
    for k, im in enumerate(imgs):  # slow reference: PIL luminance + resize to 64, scipy.fftpack DCT, 16×16 block
        g = np.asarray(Image.fromarray(im).convert("L").resize((64, 64), Image.BILINEAR), dtype=np.float64)
        c = fftpack.dct(fftpack.dct(g, axis=0), axis=1)[:16, :16]
        ref = int("".join("1" if b else "0" for b in (c > np.median(c)).ravel()), 2)
        words = [(ref >> (64 * (3 - w))) & ((1 << 64) - 1) for w in range(4)]
        assert hamming(np.array(words, np.uint64), fast[k]).sum() <= 12    # resampling differs slightly


def test_near_duplicate_candidates_are_confirmed_by_the_detail_hash(tmp_path):
    """Same layout, different texture: a pHash candidate the detail hash rejects (listed for checking by eye,
    not counted); a JPEG re-save of one of them: confirmed."""
    a, b = _layout_twin(1), _layout_twin(2)
    for name, im in (("a", a), ("b", b)):
        Image.fromarray(im).save(tmp_path / f"{name}.png")
    Image.fromarray(a).save(tmp_path / "a_copy.jpg", quality=80)
    df = pd.DataFrame({"image_id": ["a", "b", "a_copy"], "image": [str(tmp_path / f) for f in
                                                                   ("a.png", "b.png", "a_copy.jpg")],
                       "label": ["mel", "nv", "nv"], "split": ["test", "train", "train"], "mask": None})
    spec = InputSpec(size=224)
    with pytest.warns(UndefinedMetricWarning):
        res = run_scan({"regions": {"ink": {}}}, df, tmp_path / "o", spec, min_n=1)
    nd = res.summary["leakage"]["near_duplicates"]
    assert nd["n_candidates"] == 2 and nd["n_pairs"] == 1 and nd["n_unconfirmed"] == 1   # across splits only
    (p,) = nd["pairs"]
    assert {p["image_id_a"], p["image_id_b"]} == {"a", "a_copy"} and p["detail_distance"] <= 48
    csv = pd.read_csv(tmp_path / "o" / "near_duplicates.csv")
    rejected = csv[~csv["confirmed"]].iloc[0]
    assert {rejected["image_id_a"], rejected["image_id_b"]} == {"a", "b"}
    assert rejected["distance"] <= 6 and rejected["detail_distance"] > 48
    assert nd["sheet"] == "near_duplicates.png" and (tmp_path / "o" / "near_duplicates.png").is_file()
    assert Image.open(tmp_path / "o" / "near_duplicates.png").size[0] == 4 * 160            # two pairs a row
    con = Console(width=200, color_system=None, force_terminal=False, record=True)
    render_scan(res.summary, con)
    lines = con.export_text().splitlines()
    head = next(ln for ln in lines if "256-bit" in ln)          # confirmed pairs: the hash, its threshold, n_pairs
    assert "≤ 48" in head and f"{nd['n_pairs']} pair" in head
    more = next(ln for ln in lines if "pHash" in ln and ln is not head)   # the unconfirmed candidates, counted
    assert more.strip().startswith(f"{nd['n_unconfirmed']} ")
    from audit.scan import scan_renderable   # the files line names the pair files
    con2 = Console(width=300, color_system=None, force_terminal=False, record=True)
    con2.print(scan_renderable(res.summary, str(tmp_path / "o")))
    files = " ".join(con2.export_text().split()).split("Files:", 1)[1]
    assert all(f in files for f in ("contact_<artifact>.png", "near_duplicates.csv", "near_duplicates.png")), files
    with pytest.warns(UndefinedMetricWarning):
        loose = run_scan({"regions": {"ink": {}}}, df, tmp_path / "o2", spec, min_n=1, detail_threshold=256)
    assert loose.summary["leakage"]["near_duplicates"]["n_pairs"] == 2


def test_cramers_v_bootstrap_ci_is_seeded_covers_and_agrees_with_the_vectorised_formula():
    from audit.association import corrected_v
    t = np.array([[30, 20], [25, 40], [50, 35]])
    cv = cramers_v(t, seed=3, n_boot=400)
    assert cv["lo"] <= cv["value"] <= cv["hi"] and 0 <= cv["lo"] and cv["hi"] <= 1
    assert cramers_v(t, seed=3, n_boot=400) == cv                       # seeded
    assert cramers_v(t, n_boot=0)["lo"] is None
    # the vectorised formula used for the bootstrap equals the scalar one, zero rows dropped per table
    tabs = np.array([[[5, 5], [2, 8], [9, 1]], [[0, 0], [2, 8], [9, 1]], [[3, 0], [4, 0], [5, 0]]])
    vv = corrected_v(tabs)
    assert vv[0] == pytest.approx(cramers_v(tabs[0], n_boot=0)["value"])
    assert vv[1] == pytest.approx(cramers_v(tabs[1][1:], n_boot=0)["value"])
    assert np.isnan(vv[2])                                                 # one non-empty column: undefined
    # coverage: tables drawn from known cell shares (true corrected V from the shares, n → ∞)
    shares = np.array([[0.2, 0.1], [0.1, 0.3], [0.15, 0.15]])
    r = shares.sum(1, keepdims=True)
    c = shares.sum(0, keepdims=True)
    true_v = math.sqrt(((shares - r * c) ** 2 / (r * c)).sum())   # φ² of the population, min(r, c) − 1 = 1
    rng = np.random.default_rng(0)
    hits = 0
    for k in range(100):
        e = cramers_v(rng.multinomial(400, shares.ravel()).reshape(3, 2), seed=k, n_boot=300, n_mc=10)
        hits += e["lo"] <= true_v <= e["hi"]
    assert hits >= 85                                                      # nominal 95%


def test_format_tiers_and_mode_names():
    from audit.preprocess import aspect_class, format_record, mode_label, short_side_tier
    assert [short_side_tier(h, 4000) for h in (1, 255, 256, 511, 512, 1023, 1024, 2047, 2048, 5000)] == \
        ["<256", "<256", "256–511", "256–511", "512–1023", "512–1023", "1024–2047", "1024–2047", "≥2048", "≥2048"]
    assert short_side_tier(3000, 300) == "256–511"                         # the shorter side, either way round
    assert [aspect_class(100, w) for w in (94, 95, 100, 105, 106)] == \
        ["portrait", "square", "square", "square", "landscape"]
    assert [mode_label(m) for m in ("L", "I;16", "I", "RGBA", "P", "XYZ", None)] == \
        ["gray 8-bit", "gray 16-bit", "gray 16-bit", "RGBA", "palette", "XYZ", "unknown"]
    assert format_record((450, 600), {"format": "JPEG", "mode": "RGB", "bit_depth": 8}) == {
        "src_height": 450, "src_width": 600, "src_format": "JPEG", "src_mode": "RGB", "src_short_side": "256–511",
        "src_aspect": "landscape"}


def test_format_by_label_known_table():
    """Levels' shares by class are counts over class sizes; V is `cramers_v` of the level × class table; a
    one-level attribute is called constant, and unlabelled images are left out."""
    from audit.formats import format_by_label
    fmt = ["JPEG"] * 12 + ["PNG"] * 3 + ["PNG"] * 15 + ["JPEG"] * 2      # mel: 12 JPEG 3 PNG; nv: 15 PNG 2 JPEG
    df = pd.DataFrame({"label": ["mel"] * 15 + ["nv"] * 17 + [None], "src_format": fmt + ["TIFF"],
                       "src_mode": "RGB", "src_short_side": "512–1023", "src_aspect": ["square"] * 33})
    out = format_by_label(df, ["mel", "nv"], min_n=10, alpha=0.05, n_boot=200, seed=0)
    assert out["n"] == 32 and out["constant"] == {"colour mode": "RGB", "short side": "512–1023", "aspect": "square"}
    e = out["attributes"]["file type"]
    assert list(e["levels"]) == ["PNG", "JPEG"]                          # largest first; TIFF (unlabelled) left out
    assert (e["levels"]["PNG"]["n"], e["levels"]["JPEG"]["n"]) == (18, 14)
    assert e["levels"]["JPEG"]["by_label"]["mel"]["value"] == pytest.approx(12 / 15)
    assert e["levels"]["JPEG"]["by_label"]["nv"]["k"] == 2 and e["levels"]["PNG"]["prevalence"]["value"] == 18 / 32
    ref = cramers_v([[3, 15], [12, 2]], n_boot=200)
    assert e["association"]["value"] == pytest.approx(ref["value"]) and e["association"]["lo"] == ref["lo"]
    assert e["association"]["value"] > 0.5


def test_scan_reports_a_file_format_that_follows_the_label(tmp_path):
    """mel saved as JPEG, nv as 16-bit grayscale PNG: both attributes follow the label exactly (V's CI well
    above 0, shown in red in the terminal), scan.csv holds each image's format columns."""
    from audit.formats import association_strong
    df = make_set(tmp_path, n_mel=12, n_nv=12, ink_mel=0, ink_nv=0)
    for i, r in df.iterrows():
        if r["label"] == "mel":
            p = str(r["image"]).replace(".png", ".jpg")
            Image.open(r["image"]).save(p, quality=90)
        else:
            p = str(r["image"]).replace(".png", "_16.png")
            Image.fromarray(np.asarray(Image.open(r["image"]).convert("L")).astype(np.uint16) * 257).save(p)
        df.loc[i, "image"] = p
    res = run_scan(PRESET, df, tmp_path / "o", SPEC, n_boot=200)
    f = res.summary["format"]
    assert set(f["attributes"]) == {"file type", "colour mode"}
    assert f["constant"] == {"short side": "<256", "aspect": "square"}
    ft = f["attributes"]["file type"]
    assert {x: (lv["by_label"]["mel"]["k"], lv["by_label"]["nv"]["k"]) for x, lv in ft["levels"].items()} == \
        {"JPEG": (12, 0), "PNG": (0, 12)}
    assert set(f["attributes"]["colour mode"]["levels"]) == {"RGB", "gray 16-bit"}
    assert association_strong(ft["association"]) and ft["association"]["value"] > 0.9
    csv = pd.read_csv(tmp_path / "o" / "scan.csv")
    assert set(csv["src_format"]) == {"JPEG", "PNG"} and set(csv["src_height"]) == {S}
    con = Console(width=100, color_system=None, force_terminal=False, record=True)
    render_scan(res, con)
    text = con.export_text()
    assert "Image format by label" in text and "file type: JPEG" in text and "gray 16-bit" in text
    const = " ".join(next(ln for ln in text.splitlines() if "aspect" in ln).split())   # f["constant"], shown
    assert all(f"{k} {v}" in const for k, v in f["constant"].items()), const
    assert all(len(line) <= 100 for line in text.splitlines())


def test_format_by_view_on_real_radiographs_matches_pillow(tmp_path):
    """cxr_covid_v7 (skips without ../shared/data): the scan's colour-mode and file-type counts per view equal a
    crosstab of what Pillow reports for each file, computed here independently."""
    from conftest import SHARED_DATA
    base = SHARED_DATA / "cxr_covid_v7"
    if not (base / "labels.csv").is_file():
        pytest.skip(f"real data not available: {base}")
    from audit.preprocess import mode_label
    from audit.manifest import DataSpec
    raw = pd.read_csv(base / "labels.csv")
    want_mode, want_fmt = {}, {}
    for p, v in zip(raw["image"], raw["view"]):
        with Image.open(base / p) as im:
            want_mode[(mode_label(im.mode), v)] = want_mode.get((mode_label(im.mode), v), 0) + 1
            want_fmt[(im.format, v)] = want_fmt.get((im.format, v), 0) + 1
    df = load_manifest(base / "labels.csv", DataSpec(columns={"label": "view"}))
    res = run_scan({"regions": {"device": {"source": "file", "values": [127]}}}, df, tmp_path / "o", SPEC, n_boot=50)
    f = res.summary["format"]["attributes"]
    got_mode = {(x, c): lv["by_label"][c]["k"] for x, lv in f["colour mode"]["levels"].items()
                for c in lv["by_label"] if lv["by_label"][c]["k"]}
    got_fmt = {(x, c): lv["by_label"][c]["k"] for x, lv in f["file type"]["levels"].items()
               for c in lv["by_label"] if lv["by_label"][c]["k"]}
    assert got_mode == want_mode and got_fmt == want_fmt
    assert want_mode.get(("RGBA", "AP Supine"), 0) == 0 and want_mode[("RGBA", "PA")] == 18  # as docs/scan.md says
