"""masks/: registry, file masks, geometry, alignment, bad input, export (known answers on small synthetic data)."""
from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from audit.errors import ConfigError, MaskWarning
from audit.preprocess import InputSpec, image_to_grid, mask_to_grid
from masks import RegionResult, build_regions, list_regions, region_kind, register_region
from audit.config import load_preset
from masks.export import export_masks
from masks.registry import _REGISTRY

ALL = {"lungs": "target", "lesion": "target", "border": "artifact", "corners": "artifact", "text": "artifact",
       "device": "artifact", "ruler": "artifact", "ink": "artifact", "dark_corners": "artifact",
       "patches": "artifact", "gel_border": "artifact"}


def _png(path, arr):
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)
    return str(path)


def _row(image="/nonexistent/x.png", mask=None, image_id="img1"):
    return {"image_id": image_id, "image": image, "label": "a", "split": "test", "mask": mask}


# ------------------------------------------------------------------------------------------ registry

def test_registry_lists_every_builtin_region_with_its_kind():
    assert set(ALL) <= set(list_regions())
    for name, kind in ALL.items():
        assert region_kind(name) == kind
    assert set(list_regions("target")) >= {"lungs", "lesion"}
    assert "lungs" not in list_regions("artifact")


def test_duplicate_registration_is_loud():
    with pytest.raises(ValueError, match="already registered"):
        @register_region("ink", kind="artifact")
        def other(image, ctx):  # pragma: no cover
            return RegionResult(None)


def test_unknown_kind_and_unknown_region_are_loud():
    with pytest.raises(ValueError, match="kind"):
        register_region("x_new", kind="nonsense")
    with pytest.raises(KeyError, match="unknown region"):
        region_kind("nope")
    with pytest.raises(ConfigError, match="nope"):
        build_regions({"nope": {}})
    with pytest.raises(ConfigError, match="wdth"):
        build_regions({"border": {"wdth": 0.1}})
    with pytest.raises(ConfigError, match="source"):
        build_regions({"lungs": {"source": "magic"}})
    with pytest.raises(ConfigError, match="values"):
        build_regions({"lungs": {"source": "file", "values": "lots"}})
    with pytest.raises(ConfigError, match="need source: file"):
        build_regions({"text": {"values": [1]}})
    # a provider's numeric parameter must be a number: "abc" used to fail every image alike, the audit went on
    for bad in ("abc", -0.1, float("nan"), True, [0.1]):
        with pytest.raises(ConfigError, match=r"regions\.border\.width: expected a number ≥ 0 \(default 0\.08\)"):
            build_regions({"border": {"width": bad}})
    assert build_regions({"border": {"width": 3}}).configs[0].params["width"] == 3  # pixels


def test_regionset_kinds_and_pickle():
    rs = build_regions({"lungs": {"source": "file", "values": [255], "fallback": "heuristic"},
                        "device": {"source": "file", "values": [127]}, "border": {"width": 0.1}, "text": None})
    assert rs.kinds == {"lungs": "target", "device": "artifact", "border": "artifact", "text": "artifact"}
    rs2 = pickle.loads(pickle.dumps(rs))
    img = np.full((32, 32, 3), 128, np.uint8)
    a = rs.compute(img, _row(), InputSpec(size=32), (32, 32))
    b = rs2.compute(img, _row(), InputSpec(size=32), (32, 32))
    assert np.array_equal(a["border"].mask, b["border"].mask)


def test_failing_provider_becomes_missing_with_warning():
    @register_region("_test_boom", kind="artifact")
    def boom(image, ctx):
        raise RuntimeError("kaput")
    try:
        rs = build_regions({"_test_boom": {}})
        with pytest.warns(MaskWarning, match="kaput"):
            r = rs.compute(np.zeros((16, 16, 3), np.uint8), _row(), InputSpec(size=16), (16, 16))
        assert r["_test_boom"].mask is None and "kaput" in r["_test_boom"].note
    finally:
        _REGISTRY.pop("_test_boom", None)


# ------------------------------------------------------------------------------------------ geometry

def test_border_band_area_is_exact():
    rs = build_regions({"border": {"width": 0.08}})
    r = rs.compute(np.zeros((100, 100, 3), np.uint8), _row(), InputSpec(size=100), (100, 100))["border"]
    assert r.mask.dtype == bool and r.mask.shape == (100, 100)
    assert r.mask.sum() == 100 * 100 - 84 * 84  # 8-px band
    assert math.isnan(r.score) and r.present is None and r.note == "geometry"
    r = build_regions({"border": {"width": 5}}).compute(np.zeros((50, 50, 3), np.uint8), _row(), InputSpec(size=50),
                                                        (50, 50))["border"]
    assert r.mask.sum() == 50 * 50 - 40 * 40


def test_corners_area_is_exact():
    r = build_regions({"corners": {"size": 0.1}}).compute(np.zeros((100, 100, 3), np.uint8), _row(),
                                                          InputSpec(size=100), (100, 100))["corners"]
    assert r.mask.sum() == 4 * 10 * 10
    assert r.mask[0, 0] and r.mask[99, 99] and not r.mask[50, 50] and not r.mask[0, 50]


# ------------------------------------------------------------------------------------------ file masks

def test_multivalued_mask_maps_values_to_regions_with_exact_areas(tmp_path):
    m = np.zeros((100, 100), np.uint8)
    m[10:30, 20:50] = 255   # 600 px of lung
    m[60:70, 60:70] = 127   # 100 px of device
    m[80:85, 0:4] = 64      # another value, in neither region
    row = _row(mask=_png(tmp_path / "m.png", m))
    rs = build_regions({"lungs": {"source": "file", "values": [255]}, "device": {"source": "file", "values": [127]}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = rs.compute(np.zeros((100, 100, 3), np.uint8), row, InputSpec(size=100), (100, 100))
    assert res["lungs"].mask.sum() == 600 and res["lungs"].note == "file"
    assert res["device"].mask.sum() == 100
    assert not (res["lungs"].mask & res["device"].mask).any()
    # binary reading of the same file: > 127 is lung only; threshold 0 is every nonzero pixel
    b = build_regions({"lesion": {"source": "file"}}).compute(np.zeros((100, 100, 3), np.uint8), row,
                                                                InputSpec(size=100), (100, 100))["lesion"]
    assert b.mask.sum() == 600
    nz = build_regions({"lesion": {"source": "file", "threshold": 0}}).compute(
        np.zeros((100, 100, 3), np.uint8), row, InputSpec(size=100), (100, 100))["lesion"]
    assert nz.mask.sum() == 600 + 100 + 20


def test_absent_value_in_multivalued_mask_is_missing_not_zero(tmp_path):
    m = np.zeros((40, 40), np.uint8)
    m[5:20, 5:20] = 255
    row = _row(mask=_png(tmp_path / "m.png", m))
    res = build_regions({"device": {"source": "file", "values": [127]}}).compute(
        np.zeros((40, 40, 3), np.uint8), row, InputSpec(size=40), (40, 40))
    assert res["device"].mask is None and "127" in res["device"].note


def test_mask_pattern_option_resolves_against_root(tmp_path):
    m = np.zeros((20, 20), np.uint8)
    m[:10] = 255
    _png(tmp_path / "img7_seg.png", m)
    rs = build_regions({"lesion": {"source": "file", "pattern": "{image_id}_seg.png", "root": str(tmp_path)}})
    r = rs.compute(np.zeros((20, 20, 3), np.uint8), _row(image_id="img7"), InputSpec(size=20), (20, 20))["lesion"]
    assert r.mask.sum() == 200


@pytest.mark.parametrize("resize", ["stretch", "crop"])
def test_file_mask_follows_the_image_geometry_on_a_non_square_image(tmp_path, resize):
    h, w = 120, 200
    img = np.full((h, w, 3), 90, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    img[30:90, 70:170] = (255, 0, 0)  # a red rectangle, partly cut by the centre crop
    mask[30:90, 70:170] = 255
    spec = InputSpec(size=60, resize=resize)
    grid = image_to_grid(img, spec)
    row = _row(mask=_png(tmp_path / "m.png", mask))
    got = build_regions({"lesion": {"source": "file"}}).compute(grid, row, spec, (h, w))["lesion"].mask
    assert np.array_equal(got, mask_to_grid(mask > 127, spec, (h, w)))
    red = (grid[..., 0] > 200) & (grid[..., 1] < 40)
    partial = (grid[..., 0] > 110) & ~red  # anti-aliased rim
    assert red.sum() > 100
    assert (red <= got).all()  # every clearly red pixel is in the mask
    assert not (got & ~red & ~partial).any()  # every mask pixel is red or on the rim
    iou = (red & got).sum() / (red | got).sum()
    assert iou > 0.85
    if resize == "crop":  # the crop keeps the central 120×120: rectangle columns 40..120 → 70..120 kept
        assert got.shape == (60, 60) and got[:, -1].any() and not got[:, :10].any()


@pytest.mark.parametrize("hw", [(120, 200), (201, 130), (97, 333), (150, 150)])
@pytest.mark.parametrize("crop_pct", [1.0, 0.875, 0.93])
@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
def test_crop_geometry_is_torchvisions_resize_and_centre_crop_pixel_for_pixel(hw, crop_pct, interp):
    """timm's eval transform (Resize(floor(S / crop_pct)), CenterCrop(S)) on a PIL image, reproduced exactly,
    so a mask lands on the pixels the model saw (64 / 0.93 = 68.8 resizes to 68, not 69)."""
    T = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    size = 64
    spec = InputSpec(size=size, resize="crop", crop_pct=crop_pct, interpolation=interp)
    ref = T.Compose([T.Resize(math.floor(size / crop_pct), interpolation=T.InterpolationMode(interp)),
                     T.CenterCrop(size)])(Image.fromarray(img))
    assert np.array_equal(image_to_grid(img, spec), np.asarray(ref))
    # a mask of the image's pixel coordinates lands where the image's pixels did
    yy, xx = np.mgrid[0:hw[0], 0:hw[1]]
    idx = mask_to_grid((yy * hw[1] + xx).astype(np.int64), spec)
    ref_idx = T.Compose([T.Resize(math.floor(size / crop_pct), interpolation=T.InterpolationMode.NEAREST),
                         T.CenterCrop(size)])(Image.fromarray((yy * hw[1] + xx).astype(np.int32), mode="I"))
    assert np.abs(idx // hw[1] - np.asarray(ref_idx) // hw[1]).max() <= 1  # nearest-neighbour rounding only
    assert np.abs(idx % hw[1] - np.asarray(ref_idx) % hw[1]).max() <= 1


def test_dicom_without_pixels_is_refused_by_name(tmp_path):
    """A suffix-less file with the DICM preamble goes to the DICOM reader (audit/dicom.py, tests/test_dicom.py),
    which refuses it with one line: no image in it, or the extra is missing."""
    from audit.preprocess import load_rgb
    p = tmp_path / "scan0001"  # no suffix: recognised by the DICM preamble
    p.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    with pytest.raises(ValueError, match=r"^(DICOM without PixelData|not a readable DICOM|truncated DICOM|a DICOM "
                                         r"file, and pydicom is not installed)"):
        load_rgb(p)


def test_float_and_16_bit_images_are_not_black(tmp_path):
    """PIL's own conversion clips a float image in [0, 1] to 0/1 (black); 16-bit scales by the maximum."""
    from audit.preprocess import load_rgb
    a = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    Image.fromarray(a, mode="F").save(tmp_path / "f.tif")
    rgb = load_rgb(tmp_path / "f.tif")
    assert rgb.shape == (16, 16, 3) and rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    assert rgb[..., 0] == pytest.approx(np.round(a * 255), abs=0)                # [0, 1] kept as is
    Image.fromarray(a * 3000 - 1000, mode="F").save(tmp_path / "hu.tif")      # its own range: stretched
    assert load_rgb(tmp_path / "hu.tif")[..., 1] == pytest.approx(np.round(a * 255), abs=1)
    b = a.copy()
    b[0, 0] = np.nan
    Image.fromarray(b, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_rgb(tmp_path / "nan.tif")
    Image.fromarray((a * 4095).astype(np.uint16)).save(tmp_path / "u16.png")
    assert load_rgb(tmp_path / "u16.png")[-1, -1, 2] == 255


def test_mask_of_other_size_is_resized_and_warns_only_on_aspect_change(tmp_path):
    m = np.zeros((50, 100), np.uint8)
    m[:, :50] = 255  # left half
    row = _row(mask=_png(tmp_path / "half.png", m))
    rs = build_regions({"lesion": {"source": "file"}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same aspect (2:1), other size: no warning
        r = rs.compute(np.zeros((40, 40, 3), np.uint8), row, InputSpec(size=40), (100, 200))["lesion"]
    assert r.mask.sum() == 40 * 20
    with pytest.warns(MaskWarning, match="aspect ratio"):
        r = rs.compute(np.zeros((40, 40, 3), np.uint8), row, InputSpec(size=40), (100, 100))["lesion"]
    assert r.mask is not None and r.mask.sum() == 40 * 20


@pytest.mark.parametrize("kind", ["empty", "ones", "garbage", "missing_file"])
def test_bad_mask_files_warn_and_mark_region_missing(tmp_path, kind):
    p = tmp_path / "m.png"
    if kind == "empty":
        _png(p, np.zeros((30, 30)))
    elif kind == "ones":
        _png(p, np.full((30, 30), 255))
    elif kind == "garbage":
        p.write_bytes(b"this is not a png")
    rs = build_regions({"lesion": {"source": "file"}})
    with pytest.warns(MaskWarning):
        r = rs.compute(np.zeros((30, 30, 3), np.uint8), _row(mask=str(p)), InputSpec(size=30), (30, 30))["lesion"]
    assert r.mask is None and r.note
    assert math.isnan(r.score)


def test_no_mask_in_row_is_missing_and_fallback_uses_the_heuristic(tmp_path):
    img = np.full((64, 64, 3), 128, np.uint8)
    for m in (None, float("nan"), pd.NA, ""):
        r = build_regions({"lesion": {"source": "file"}}).compute(img, _row(mask=m), InputSpec(size=64), (64, 64))
        assert r["lesion"].mask is None and "no mask file" in r["lesion"].note
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    rs = build_regions({"border": {}, "lesion": {"source": "file", "fallback": "heuristic"}})
    yy, xx = np.mgrid[0:64, 0:64]
    img[((yy - 32) ** 2 + (xx - 32) ** 2) < 15 ** 2] = (90, 60, 40)
    with pytest.warns(MaskWarning, match="cannot read"):
        r = rs.compute(img, _row(mask=str(bad)), InputSpec(size=64), (64, 64))["lesion"]
    assert r.mask is not None and r.note.startswith("heuristic") and "cannot read" in r.note


def test_artifact_file_region_says_whether_the_artifact_is_there(tmp_path):
    """An artifact file region's presence is what its file says; no file is unknown unless absent_when_empty."""
    two = np.zeros((30, 30), np.uint8)
    two[5:10, 5:10] = 127
    two[20:25, 20:25] = 255
    _png(tmp_path / "dev.png", two)
    lung_only = np.where(two == 127, 0, two)
    _png(tmp_path / "nodev.png", lung_only)
    _png(tmp_path / "zero.png", np.zeros((30, 30)))
    img, spec = np.zeros((30, 30, 3), np.uint8), InputSpec(size=30)

    def present(opts, mask, kind="device"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MaskWarning)
            return build_regions({kind: opts}).compute(img, _row(mask=mask), spec, (30, 30))[kind].present
    dev = {"source": "file", "values": [127]}
    assert present(dev, str(tmp_path / "dev.png")) is True
    assert present(dev, str(tmp_path / "nodev.png")) is False          # the file lacks the value: absent
    assert present(dev, str(tmp_path / "zero.png")) is False           # an all-zero artifact mask: absent
    assert present(dev, str(tmp_path / "missing.png")) is None         # a named file that is not there: unknown
    assert present(dev, None) is None                                  # no file for the image: unknown ...
    assert present({**dev, "absent_when_empty": True}, None) is False  # ... unless the preset says it means absent
    assert present({"source": "file"}, str(tmp_path / "dev.png"), kind="lesion") is None  # targets: no presence
    with pytest.raises(ConfigError, match="absent_when_empty: expected true or false"):
        build_regions({"device": {**dev, "absent_when_empty": "yes"}})


def test_compute_validates_grid_image():
    rs = build_regions({"border": {}})
    with pytest.raises(ValueError, match="S×S×3"):
        rs.compute(np.zeros((10, 12, 3), np.uint8), _row(), InputSpec(size=10), (10, 12))
    with pytest.raises(TypeError, match="uint8"):
        rs.compute(np.zeros((10, 10, 3), np.float32), _row(), InputSpec(size=10), (10, 10))


# ------------------------------------------------------------------------------------------ presets

def test_shipped_presets_load_and_build():
    for name in ("chest_xray", "ham10000", "isic"):
        cfg = load_preset(f"configs/{name}.yaml")
        assert cfg["input"]["size"] == 224
        rs = build_regions(cfg["regions"])
        assert "target" in rs.kinds.values() and "artifact" in rs.kinds.values()
    cx = build_regions(load_preset("configs/chest_xray.yaml")["regions"])
    assert cx.kinds["lungs"] == "target" and cx.kinds["device"] == "artifact"


def test_load_preset_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("regions: {lungs: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml.*invalid YAML") as e:
        load_preset(bad)
    assert "\n" not in str(e.value)
    unk = tmp_path / "unk.yaml"
    unk.write_text("regions:\n  lung: {}\n")
    with pytest.raises(ConfigError, match=r"unk.yaml.*'lung'"):
        load_preset(unk)
    with pytest.raises(ConfigError, match="not found"):
        load_preset(tmp_path / "absent.yaml")
    # a mis-indented region lands at the top level: refused by name, not ignored (it would scan nothing)
    top = tmp_path / "top.yaml"
    top.write_text("regions:\n  ink: {}\nborder:\n  width: 0.1\n")
    with pytest.raises(ConfigError, match=r"top.yaml: unknown top-level section\(s\) \['border'\]"):
        load_preset(top)


@pytest.mark.parametrize("text,match", [
    ("data:\n  colums: {label: dx}\n", r"data: unknown key\(s\) \['colums'\]"),
    ("input:\n  siz: 100\n", r"input: unknown key\(s\) \['siz'\]"),
    ("input:\n  resize: squeeze\n", "input.resize: expected 'stretch' or 'crop'"),
    ("scan:\n  min_nn: 3\n", r"scan: unknown key\(s\) \['min_nn'\]"),
    ("audit:\n  n_bot: 3\n", r"unknown key\(s\) in audit: \['n_bot'\]"),
    ("gates:\n  max_artifact_lif: 2\n", "gates.max_artifact_lif: unknown gate"),
    ("gates: [1]\n", "gates: expected a mapping"),
], ids=["data", "input-key", "input-value", "scan", "audit", "gate-name", "gates-list"])
def test_every_preset_section_is_checked_on_load(tmp_path, text, match):
    """A typo in any section fails whichever command loads the preset (scan and masks as well as audit), with
    the file's name, instead of being ignored there."""
    p = tmp_path / "p.yaml"
    p.write_text("regions:\n  ink: {}\n" + text)
    with pytest.raises(ConfigError, match="p.yaml: " + match) as e:
        load_preset(p)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ export

def test_export_writes_pngs_contact_sheet_and_csv(tmp_path):
    rows = []
    for i in range(3):
        img = np.full((80, 120, 3), 200, np.uint8)
        img[20:60, 40:80] = 60
        m = np.zeros((80, 120), np.uint8)
        m[20:60, 40:80] = 255
        rows.append(_row(image=_png(tmp_path / f"i{i}.png", img), mask=_png(tmp_path / f"m{i}.png", m),
                         image_id=f"i{i}"))
    rows.append(_row(image=str(tmp_path / "absent.png"), image_id="gone"))
    df = pd.DataFrame(rows)
    preset = {"regions": {"lesion": {"source": "file"}, "border": {"width": 0.1}, "ink": {}}}
    out = tmp_path / "out"
    seen = []
    with pytest.warns(MaskWarning, match="unreadable image"):
        export_masks(preset, df, out, InputSpec(size=50), progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (4, 4)
    assert (out / "contact_sheet.png").is_file() and (out / "regions.csv").is_file()
    png = np.asarray(Image.open(out / "i0" / "lesion.png"))
    assert png.shape == (50, 50) and set(np.unique(png)) == {0, 255}
    assert not (out / "i0" / "ink.png").exists()  # no ink: not detected, not written
    csv = pd.read_csv(out / "regions.csv")
    assert list(csv["image_id"]) == ["i0", "i1", "i2", "gone"]
    assert csv.loc[0, "border_area"] == pytest.approx(1 - 40 * 40 / 2500)
    assert csv.loc[0, "lesion_area"] == pytest.approx(png.mean() / 255)
    assert math.isnan(csv.loc[3, "lesion_area"]) and "unreadable" in csv.loc[3, "status"]
    assert "ink_score" in csv.columns and not math.isnan(csv.loc[0, "ink_score"])
    assert len(export_masks(preset, df.iloc[:3], tmp_path / "o2", InputSpec(size=50), limit=2)) == 2

    def stop_after_two(done, total):
        if done == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        export_masks(preset, df.iloc[:3], tmp_path / "o3", InputSpec(size=50), progress=stop_after_two)
    assert list(pd.read_csv(tmp_path / "o3" / "regions.csv")["image_id"]) == ["i0", "i1"]  # nothing done is lost
    assert (tmp_path / "o3" / "contact_sheet.png").is_file()


def test_scale16_rules_known_answers(tmp_path):
    """Each `input.scale16` rule on one 16-bit image, against values computed by hand (round(x · 255))."""
    from audit.preprocess import load_rgb
    a = np.array([[100, 1000, 4095, 4096]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "u16.png")
    got = {r: load_rgb(tmp_path / "u16.png", r)[0, :, 0].tolist() for r in ("max", "full", "minmax", 12)}
    assert got["max"] == [6, 62, 255, 255]      # / 4096: 6.23, 62.26, 254.94, 255
    assert got["full"] == [0, 4, 16, 16]        # / 65535: 0.39, 3.89, 15.93, 15.94
    assert got["minmax"] == [0, 57, 255, 255]   # (a − 100) / 3996: 0, 57.43, 254.94, 255
    assert got[12] == [6, 62, 255, 255]         # / 4095: 6.23, 62.27, 255, 255.06 clipped
    assert load_rgb(tmp_path / "u16.png").tolist() == load_rgb(tmp_path / "u16.png", "max").tolist()  # default


def test_scale16_full_gives_the_8_bit_pixels_of_a_16_bit_copy(tmp_path):
    """v · 257 / 65535 · 255 = v exactly: under "full" a 16-bit copy (× 257) of an 8-bit image reads as the 8-bit
    image; under the default "max" it does not (its maximum is below 255)."""
    from audit.preprocess import load_rgb
    v = np.random.default_rng(0).integers(0, 250, (20, 30), dtype=np.uint8)
    Image.fromarray(v).save(tmp_path / "u8.png")
    Image.fromarray(v.astype(np.uint16) * 257).save(tmp_path / "u16.png")
    assert np.array_equal(load_rgb(tmp_path / "u16.png", "full"), load_rgb(tmp_path / "u8.png"))
    assert not np.array_equal(load_rgb(tmp_path / "u16.png"), load_rgb(tmp_path / "u8.png"))
    assert np.array_equal(load_rgb(tmp_path / "u8.png", "minmax"), load_rgb(tmp_path / "u8.png"))  # 8-bit: untouched


@pytest.mark.parametrize("bad", ["foo", 7, 17, True, 12.0, None])
def test_scale16_bad_value_names_the_option(bad):
    from audit.errors import ConfigError
    from audit.preprocess import InputSpec
    with pytest.raises(ConfigError, match=r"input\.scale16: expected one of \['max', 'full', 'minmax'\] or a bit"):
        InputSpec(scale16=bad)
