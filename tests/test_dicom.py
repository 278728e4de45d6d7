"""DICOM input (audit/dicom.py): known pixels through the Modality LUT, the window and MONOCHROME1; pydicom's own
compressed test files against their uncompressed references; every refused case; header columns that never hold
identifying data; device bias in the scan; an audit of DICOM copies equal to the audit of the PNGs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import SHARED_DATA

pydicom = pytest.importorskip("pydicom", reason="the dicom extra is not installed (pip install -e '.[dicom]')")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402

import cli  # noqa: E402
from audit.dicom import write_dicom, header_record, identifying, is_dicom, patient_hash, read_dicom, spacing_tier  # noqa: E402
from audit.errors import ConfigError  # noqa: E402
from audit.preprocess import InputSpec, load_rgb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def gray(path: Path, **kw) -> np.ndarray:
    a = load_rgb(path, **kw)
    assert a.dtype == np.uint8 and a.ndim == 3 and (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all()
    return a[..., 0]


# ================================================================================================ pixels, by hand

def test_window_12_bit_stored_in_16_by_hand(tmp_path):
    """PS3.3 C.11.2.1.2.1 LINEAR, C=1000 W=1001: y = (x − 999.5)/1000 + 0.5 clipped, × 255 rounded."""
    x = np.array([[0, 600, 1000], [1400, 4095, 500]], dtype=np.uint16)
    p = write_dicom(tmp_path / "w.dcm", x, bits=12, WindowCenter=1000, WindowWidth=1001)
    info: dict = {}
    np.testing.assert_array_equal(gray(p, info=info), [[0, 26, 128], [230, 255, 0]])
    assert info["format"] == "DICOM" and info["bits_stored"] == 12
    assert info["dicom_window"] == "window C=1000 W=1001 LINEAR"
    # "full" (the 12-bit range) and "minmax" (0..4095 here too): x / 4095
    np.testing.assert_array_equal(gray(p, dicom_window="full"), np.round(x / 4095 * 255))
    np.testing.assert_array_equal(gray(p, dicom_window="minmax"), np.round(x / 4095 * 255))


def test_rescale_slope_intercept_then_window(tmp_path):
    """Stored [0, 512, 1024, 2047], slope 2, intercept −1024 → [−1024, 0, 1024, 3070]; C=0 W=4097:
    y = (v + 0.5)/4096 + 0.5 → [64, 128, 191, 255] (without the rescale it would give [128, 160, 191, 255])."""
    x = np.array([[0, 512, 1024, 2047]], dtype=np.uint16)
    p = write_dicom(tmp_path / "r.dcm", x, bits=12, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=0,
                    WindowWidth=4097)
    np.testing.assert_array_equal(gray(p), [[64, 128, 191, 255]])


def test_monochrome1_is_inverted(tmp_path):
    x = np.array([[0, 51, 255]], dtype=np.uint8)
    p1 = write_dicom(tmp_path / "m1.dcm", x, photometric="MONOCHROME1")
    p2 = write_dicom(tmp_path / "m2.dcm", x, photometric="MONOCHROME2")
    np.testing.assert_array_equal(gray(p1, dicom_window="full"), [[255, 204, 0]])
    np.testing.assert_array_equal(gray(p2, dicom_window="full"), [[0, 51, 255]])
    info: dict = {}
    load_rgb(p1, info=info)  # no window in the header: minmax, and info says so
    window = info["dicom_window"]                 # the window applied, and the inversion
    assert window.split()[0] == "minmax" and "MONOCHROME1" in window and "inverted" in window


def test_minmax_percentile_sigmoid_signed_and_voi_lut(tmp_path):
    p = write_dicom(tmp_path / "a.dcm", np.array([[100, 200, 300]], dtype=np.uint16))
    np.testing.assert_array_equal(gray(p, dicom_window="minmax"), [[0, 128, 255]])  # 127.5 rounds to even
    q = write_dicom(tmp_path / "b.dcm", np.array([[0, 1, 2, 3, 4]], dtype=np.uint16))
    np.testing.assert_array_equal(gray(q, dicom_window="percentile:25,75"), [[0, 0, 128, 255, 255]])
    s = write_dicom(tmp_path / "s.dcm", np.array([[100, 200]], dtype=np.uint16), WindowCenter=100,
                    WindowWidth=200, VOILUTFunction="SIGMOID")
    np.testing.assert_array_equal(gray(s), [[128, 225]])  # 1/(1+e^0)=0.5; 1/(1+e^-2)=0.8808 → 224.6
    g = write_dicom(tmp_path / "g.dcm", np.array([[-2048, 0, 2047]], dtype=np.int16), bits=12, signed=True)
    np.testing.assert_array_equal(gray(g, dicom_window="full"), [[0, 128, 255]])  # 2048/4095·255 = 127.5 → 128
    v = write_dicom(tmp_path / "v.dcm", np.array([[9, 10, 11, 12, 13, 20]], dtype=np.uint16))
    ds = pydicom.dcmread(v)
    item = Dataset()
    item.LUTDescriptor = [4, 10, 8]
    item.add_new(0x00283006, "OW", np.array([0, 50, 100, 255], dtype="<u2").tobytes())  # LUTData
    ds.VOILUTSequence = [item]
    ds.save_as(v)
    np.testing.assert_array_equal(gray(v), [[0, 0, 50, 100, 255, 255]])


def test_rgb_dicom_and_suffix_less_file_with_preamble(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    p = write_dicom(tmp_path / "img", rgb)  # no suffix: recognised by the DICM preamble
    assert is_dicom(p) and not is_dicom(tmp_path / "missing.png")
    info: dict = {}
    np.testing.assert_array_equal(load_rgb(p, info=info), rgb)
    assert info["mode"] == "RGB" and info["dicom"]["dicom_PhotometricInterpretation"] == "RGB"
    # a .dcm written without the preamble is read by its suffix
    q = write_dicom(tmp_path / "nopre.dcm", rgb[..., 0], preamble=False)
    np.testing.assert_array_equal(load_rgb(q, dicom_window="full")[..., 0], rgb[..., 0])


def test_dicom_window_option_is_validated():
    for ok in ("header", "minmax", "full", "percentile:0.5,99.5"):
        assert InputSpec(dicom_window=ok).to_dict()["dicom_window"] == ok
    for bad in ("auto", "percentile:99,1", "percentile:a,b", "percentile:0,101"):
        with pytest.raises(ConfigError, match=r"input\.dicom_window: expected one of \['header', 'minmax', 'full'\]"):
            InputSpec(dicom_window=bad)
    with pytest.raises(ConfigError, match=r"input\.dicom_fields: \['PatientID', 'StudyDate'\] identify"):
        InputSpec(dicom_fields=("Manufacturer", "PatientID", "StudyDate"))


def test_header_fields_follow_the_preset_and_the_regions_presence_from(tmp_path):
    """The fields read: the preset's input.dicom_fields (else the default list), plus what a region's
    presence_from names; an identifying one is refused naming the region's option."""
    from audit.config import resolve_config
    from audit.dicom import DEFAULT_FIELDS, fields_for_regions
    from audit.pipeline import header_spec
    text = {"text": {"presence_from": "dicom_BurnedInAnnotation"}}
    assert fields_for_regions(None, {}) is None and fields_for_regions(None, text) is None  # in the default list
    assert fields_for_regions(("Manufacturer",), text) == ("Manufacturer", "BurnedInAnnotation")
    assert fields_for_regions(("Manufacturer",), {"text": {"presence_from": "dicom_signature"}}) == ("Manufacturer",)
    assert fields_for_regions(("Manufacturer",), {"text": {"presence_from": "burned"}}) == ("Manufacturer",)
    with pytest.raises(ConfigError, match=r"^regions\.text\.presence_from: dicom_PatientName is identifying"):
        fields_for_regions(None, {"text": {"presence_from": "dicom_PatientName"}})
    preset = tmp_path / "p.yaml"
    preset.write_text("input: {dicom_fields: [StationName]}\nregions:\n  text: {presence_from: dicom_DetectorType}\n")
    cfg = resolve_config({"run_dir": str(tmp_path)}, preset)
    spec = header_spec(InputSpec(), cfg)
    assert spec.dicom_fields == ("StationName", "DetectorType") and spec.to_dict() == InputSpec().to_dict()
    assert header_spec(InputSpec(), resolve_config({"run_dir": str(tmp_path)})).dicom_fields is None
    assert "DetectorType" in DEFAULT_FIELDS


# ================================================================================================ compressed

REFERENCE = "MR_small.dcm"
COMPRESSED = ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm")


@pytest.mark.parametrize("name", COMPRESSED)
def test_compressed_test_files_decode_equal_to_the_uncompressed_reference(name):
    """pydicom's own test files (shipped in the wheel): RLE, JPEG 2000 lossless and JPEG-LS lossless copies of
    MR_small decode to the reference's stored values, and so to the same image."""
    ref, comp = get_testdata_file(REFERENCE), get_testdata_file(name)
    assert pydicom.dcmread(comp).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(pydicom.dcmread(comp).pixel_array, pydicom.dcmread(ref).pixel_array)
    for w in ("header", "minmax"):
        a, b = read_dicom(ref, w), read_dicom(comp, w)
        assert a.shape == (64, 64, 3) and len(np.unique(a)) > 50
        np.testing.assert_array_equal(b, a)


#: (compressed file, its reference, max |difference| in grey levels) among pydicom's own test files. The
#: uncompressed SC_rgb.dcm is not shipped, so its lossless RLE copy stands in for it (RLE itself is checked
#: exactly against uncompressed references above and by rtdose_rle_1frame here). The lossy JPEG baseline files
#: differ by the IDCT's rounding only: SC_rgb_jpeg_dcmd.dcm is dcmtk's own decompression of SC_rgb_jpeg.dcm.
PAIRS = [("SC_rgb_jpeg.dcm", "SC_rgb_jpeg_dcmd.dcm", 1),  # JPEG baseline (process 1), YBR → RGB; ref uncompressed
         ("SC_rgb_dcmtk_+eb+cr.dcm", "SC_rgb_rle.dcm", 1),  # JPEG baseline, RGB
         ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm", 0),  # JPEG lossless (process 14, SV1)
         ("SC_rgb_gdcm_KY.dcm", "SC_rgb_rle.dcm", 0),  # JPEG 2000 (reversible wavelet)
         ("rtdose_rle_1frame.dcm", "rtdose_1frame.dcm", 0)]  # RLE, 32-bit grayscale; reference uncompressed


@pytest.mark.parametrize("name,ref,tol", PAIRS, ids=[p[0] for p in PAIRS])
def test_compressed_syntaxes_decode_equal_to_their_reference(name, ref, tol):
    """JPEG baseline, JPEG lossless, JPEG 2000 and RLE files decode (pydicom + the pylibjpeg plugins) to their
    reference: exactly for the lossless syntaxes, within `tol` grey levels for lossy JPEG baseline; and
    `read_dicom` (the auditor's pixels) gives the same image for both files."""
    dc, dr = pydicom.dcmread(get_testdata_file(name)), pydicom.dcmread(get_testdata_file(ref))
    assert dc.file_meta.TransferSyntaxUID.is_compressed
    assert not dr.file_meta.TransferSyntaxUID.is_compressed or ref == "SC_rgb_rle.dcm"
    a, b = dc.pixel_array.astype(np.int64), dr.pixel_array.astype(np.int64)
    assert a.shape == b.shape and int(np.abs(a - b).max()) <= tol
    x, y = read_dicom(get_testdata_file(name), "minmax"), read_dicom(get_testdata_file(ref), "minmax")
    assert x.shape == y.shape == (dr.Rows, dr.Columns, 3) and len(np.unique(y)) > 1
    assert int(np.abs(x.astype(np.int64) - y).max()) <= tol


@pytest.mark.parametrize("name", ("JPEG2000.dcm", "JPGExtended.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                                  "SC_rgb_rle.dcm"))
def test_lossy_and_colour_compressed_files_decode(name):
    """Files without an uncompressed twin in the wheel: decoded to the stored size, with content."""
    ds = pydicom.dcmread(get_testdata_file(name))
    a = read_dicom(get_testdata_file(name))
    assert a.shape == (ds.Rows, ds.Columns, 3) and a.dtype == np.uint8 and a.std() > 5


# ================================================================================================ refused

def _refusal(path) -> str:
    with pytest.raises(ValueError) as e:
        load_rgb(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_refused_cases_each_with_one_line(tmp_path):
    assert _refusal(get_testdata_file("SC_rgb_rle_2frame.dcm")).startswith("multi-frame DICOM (2 frames)")
    assert _refusal(get_testdata_file("rtplan.dcm")).startswith("DICOM without PixelData")
    assert _refusal(get_testdata_file("MR_truncated.dcm")).startswith("truncated DICOM")
    p = write_dicom(tmp_path / "cut.dcm", np.zeros((64, 64), np.uint16))
    b = p.read_bytes()
    (tmp_path / "cut2.dcm").write_bytes(b[: len(b) - 3000])
    assert _refusal(tmp_path / "cut2.dcm").startswith("truncated DICOM")


_NO_DECODER = """
from pydicom.pixels.decoders import JPEGLSLosslessDecoder
for name in list(JPEGLSLosslessDecoder.available_plugins):  # as pydicom sees a machine without pylibjpeg-libjpeg
    JPEGLSLosslessDecoder.remove_plugin(name)
from pydicom.data import get_testdata_file
from audit.preprocess import load_rgb
try:
    load_rgb(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
except ValueError as e:
    print(e)
"""
_NO_PYDICOM = """
import sys
sys.modules["pydicom"] = None
from audit.preprocess import load_rgb
try:
    load_rgb(sys.argv[1])
except ValueError as e:
    print(e)
"""


def test_missing_decoder_and_missing_extra_name_the_extra(tmp_path):
    out = subprocess.run([sys.executable, "-c", _NO_DECODER], capture_output=True, text=True, cwd=ROOT, timeout=120)
    msg = out.stdout.strip()                      # one line: the transfer syntax (name, UID) and the extra to install
    assert "\n" not in msg and "JPEG-LS" in msg and "1.2.840.10008.1.2.4.80" in msg and EXTRA in msg, out.stderr
    p = write_dicom(tmp_path / "x.dcm", np.zeros((4, 4), np.uint8))
    out = subprocess.run([sys.executable, "-c", _NO_PYDICOM, str(p)], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    msg = out.stdout.strip()
    assert "\n" not in msg and "pydicom" in msg and EXTRA in msg, out.stderr


EXTRA = "pip install -e '.[dicom]'"     # what the DICOM errors tell the user to run

_CLI_NO_PYDICOM = """
import sys
sys.modules["pydicom"] = None  # as on a machine without the dicom extra: `import pydicom` raises ImportError
import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_without_pydicom_a_real_audit_names_the_extra(tiny_run, tmp_path):
    """Without pydicom (ImportError simulated in a fresh interpreter): the audit of a mixed manifest audits the
    PNGs and lists every DICOM in errors.csv with one line naming the extra (exit 0); a scan of DICOMs only stops
    with that line (exit 2), no traceback."""
    data = tiny_run.parent / "data"
    man = pd.read_csv(data / "manifest.csv")
    rows = []
    for i, name in enumerate(man["image"]):
        if i % 2:
            a = np.asarray(Image.open(data / name).convert("L"))
            p = write_dicom(data / (f"n{i}.dcm" if i != 3 else "n3"), a)  # n3: suffix-less, DICM preamble
            rows.append({**man.iloc[i].to_dict(), "image": p.name})
        else:
            rows.append(man.iloc[i].to_dict())
    pd.DataFrame(rows).to_csv(data / "mixed.csv", index=False)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", _CLI_NO_PYDICOM, "audit", "--run-dir", str(tiny_run), "--data",
                        str(data / "mixed.csv"), "--out", str(out), "--workers", "0", "--quiet", "--no-report",
                        "--n-boot", "20", "--split", "all"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(pd.read_csv(out / "per_image.csv")["src_format"]) == ["PNG"] * 3
    err = pd.read_csv(out / "errors.csv")
    assert sorted(err["image"].map(lambda p: Path(p).name)) == ["n1.dcm", "n3", "n5.dcm"]
    assert all("pydicom" in x and EXTRA in x and "\n" not in x for x in err["reason"]), err["reason"].tolist()
    only = data / "only.csv"
    pd.DataFrame([rw for rw in rows if not str(rw["image"]).endswith(".png")]).to_csv(only, index=False)
    preset = tmp_path / "p.yaml"
    preset.write_text("input: {size: 64}\nregions:\n  text: {}\n")
    r = subprocess.run([sys.executable, "-c", _CLI_NO_PYDICOM, "scan", "--data", str(only), "--config", str(preset),
                        "--out", str(tmp_path / "scan"), "--workers", "0", "--quiet"], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: manifest: ") and " 3 " in lines[0], lines  # how many
    assert "pydicom" in lines[0] and EXTRA in lines[0], lines                                    # the first reason


# ================================================================================================ header

def test_header_columns_never_hold_identifying_data(tmp_path):
    p = write_dicom(tmp_path / "h.dcm", np.zeros((4, 4), np.uint8), Manufacturer="ACME", StationName="RAD1",
                    ViewPosition="PA", PixelSpacing=[0.143, 0.143], BurnedInAnnotation="YES", PatientName="Doe^Jane",
                    PatientID="P123", PatientBirthDate="19700101", AccessionNumber="A99", StudyDate="20200101",
                    ImageComments="free text about the patient")
    ds = pydicom.dcmread(p)
    rec = header_record(ds, ("Manufacturer", "StationName", "ViewPosition", "PixelSpacing", "BurnedInAnnotation",
                             "PatientID", "PatientName", "StudyInstanceUID", "ImageComments", "AccessionNumber"))
    assert rec == {"dicom_Manufacturer": "ACME", "dicom_StationName": "RAD1", "dicom_ViewPosition": "PA",
                   "dicom_PixelSpacing": "0.143", "dicom_spacing_tier": "0.1–0.149 mm",
                   "dicom_BurnedInAnnotation": "YES", "dicom_signature": "ACME / RAD1"}
    for k in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate", "StudyInstanceUID",
              "SOPInstanceUID", "ImageComments", "ReferringPhysicianName", "OperatorsName", "InstitutionAddress"):
        assert identifying(k), k
    for k in ("Manufacturer", "ManufacturerModelName", "StationName", "InstitutionName", "ViewPosition",
              "BitsStored", "BurnedInAnnotation", "DetectorType", "Modality"):
        assert not identifying(k), k
    assert [spacing_tier(x) for x in (0.05, 0.1, 0.16, 0.2, None)] == [
        "<0.1 mm", "0.1–0.149 mm", "0.15–0.199 mm", "≥0.2 mm", "unknown"]
    h = patient_hash("P123", "s3cret")
    assert h == patient_hash("P123", "s3cret") != patient_hash("P123", "other") and len(h) == 16 and "P123" not in h
    with pytest.raises(ValueError, match="AUDIT_ID_SALT"):
        patient_hash("P123", "")


# ================================================================================================ audit and scan

def _run_with_window(run_dir: Path, window: str) -> None:
    import yaml
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["input"]["dicom_window"] = window
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))


#: identifying values written into the test DICOMs: none may reach any output (the UIDs are read back per file)
SECRETS = dict(PatientName="Doe^Jane", PatientID="SECRET-ID-42", PatientBirthDate="19450317",
               AccessionNumber="ACC778899", StudyDate="20200101", StudyTime="101530", OperatorsName="Smith^Op",
               ReferringPhysicianName="Who^Doctor", ImageComments="free text: patient fell on 3rd March",
               InstitutionAddress="1 Secret Road", StudyID="STUDY-5511")


def _secret_strings(paths) -> set[str]:
    """The identifying values of these DICOM files, as written: SECRETS and every UID the files hold."""
    out = {v for v in SECRETS.values()}
    for p in paths:
        ds = pydicom.dcmread(p)
        out |= {str(e.value) for e in ds.iterall() if e.VR == "UI" and "1.2.840.10008" not in str(e.value)}
        out |= {str(e.value) for e in ds.file_meta if e.VR == "UI" and "1.2.840.10008" not in str(e.value)}
    return out


def _assert_nothing_identifying(out: Path, secrets: set[str]) -> int:
    """No secret string in any file under `out` (text and binary alike); returns the number of files read."""
    n = 0
    for f in out.rglob("*"):
        if f.is_file():
            b = f.read_bytes()
            n += 1
            for s in secrets:
                assert s.encode() not in b, (s, f)
    return n


def _block_decoder(monkeypatch) -> None:
    """pydicom as it is on a machine without pylibjpeg-libjpeg: no plugin for JPEG-LS lossless."""
    from pydicom.pixels.decoders import JPEGLSLosslessDecoder
    monkeypatch.setattr(JPEGLSLosslessDecoder, "_available", {})


NO_DECODER_REASON = ("compressed transfer syntax JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80) and "
                     "no decoder for it installed: install the DICOM extra (pip install -e '.[dicom]')")


def test_audit_mixed_manifest_refused_rows_header_columns_and_by(tiny_run, tmp_path, monkeypatch):
    """A manifest mixing PNG and DICOM (.dcm and suffix-less) audits; the refused DICOMs (multi-frame, no
    PixelData, truncated, JPEG-LS without its decoder) are errors.csv rows with their one-line reason, the rest
    is audited; the header columns reach per_image.csv, `--by dicom_Manufacturer` gives accuracy and evidence
    by device, `discover` reads the columns, and no identifying value is in any output (report included)."""
    data = tiny_run.parent / "data"
    man = pd.read_csv(data / "manifest.csv")
    rows, written = [], []
    for i, name in enumerate(man["image"]):
        a = np.asarray(Image.open(data / name).convert("L"))
        if i % 2:
            p = write_dicom(data / f"d{i}.dcm" if i % 4 == 1 else data / f"d{i}", a, Manufacturer=f"V{i % 3}",
                            InstitutionName="General Hospital", **SECRETS)
            written.append(p)
            rows.append({**man.iloc[i].to_dict(), "image": p.name})
        else:
            rows.append(man.iloc[i].to_dict())
    refused = {"rtplan.dcm": "rtplan.dcm", "two.dcm": "SC_rgb_rle_2frame.dcm", "cut.dcm": "MR_truncated.dcm",
               "jls.dcm": "MR_small_jpeg_ls_lossless.dcm"}
    for n, src in refused.items():
        (data / n).write_bytes(Path(get_testdata_file(src)).read_bytes())
        rows.append({"image": n, "label": "a", "split": "test", "site": "x"})
    pd.DataFrame(rows).to_csv(data / "mixed.csv", index=False)
    preset = tmp_path / "p.yaml"
    preset.write_text("audit: {min_n: 1}\nregions:\n  border: {width: 0.25}\n")
    _run_with_window(tiny_run, "full")
    _block_decoder(monkeypatch)
    out = tmp_path / "out"
    assert cli.main(["audit", "--run-dir", str(tiny_run), "--data", str(data / "mixed.csv"), "--out", str(out),
                     "--workers", "0", "--quiet", "--n-boot", "20", "--split", "all", "--config", str(preset),
                     "--by", "dicom_Manufacturer"]) == 0
    per = pd.read_csv(out / "per_image.csv")
    assert len(per) == 6 and sorted(per["src_format"]) == ["DICOM"] * 3 + ["PNG"] * 3
    d = per[per["src_format"] == "DICOM"].sort_values("image_id")
    assert list(d["dicom_Manufacturer"]) == ["V1", "V0", "V2"]  # d1, d3 (suffix-less), d5
    assert set(d["dicom_InstitutionName"]) == {"General Hospital"}
    assert per.loc[per["src_format"] == "PNG", "dicom_Manufacturer"].isna().all()
    err = pd.read_csv(out / "errors.csv")
    reasons = dict(zip(err["image"].map(lambda p: Path(p).name), err["reason"]))
    assert set(reasons) == set(refused)
    assert "DICOM without PixelData" in reasons["rtplan.dcm"]
    assert "multi-frame DICOM (2 frames)" in reasons["two.dcm"]
    assert "truncated DICOM" in reasons["cut.dcm"]
    assert reasons["jls.dcm"].endswith(NO_DECODER_REASON)
    assert all("\n" not in r for r in reasons.values())
    s = json.loads((out / "summary.json").read_text())
    assert set(s["accuracy_by_group"]["dicom_Manufacturer"]) >= {"V0", "V1", "V2"}
    # evidence by device: the border share's median for each manufacturer's images (one image each: its own share)
    ev = {r["group"]: r for r in s["by_group"]["rows"]
          if r["group_col"] == "dicom_Manufacturer" and r["stat"] == "median_all" and r["region"] == "frac_border"}
    assert set(ev) >= {"V0", "V1", "V2"}
    for g in ("V0", "V1", "V2"):
        assert ev[g]["n"] == 1
        assert ev[g]["value"] == pytest.approx(float(d.loc[d["dicom_Manufacturer"] == g, "frac_border"].iloc[0]))
    assert yaml_load(out / "config.resolved.yaml")["run"]["input"]["dicom_window"] == "full"
    assert (out / "report.html").is_file()
    assert _assert_nothing_identifying(out, _secret_strings(written)) > 5
    # discover runs on this audit, and its candidate attributes (what it tests each group for) are read from
    # per_image.csv: every level of the header's text columns is one (6 images: none enriched at p < 0.05 here)
    from audit.discover import _attributes
    assert cli.main(["discover", "--out", str(out), "--quiet", "--no-report", "--min-n", "1"]) == 0
    assert json.loads((out / "summary.json").read_text())["discover"]["n"] == 6
    attrs = {(c, lv) for c, lv, _, _ in _attributes(pd.read_csv(out / "per_image.csv"))}
    assert {("dicom_Manufacturer", "V0"), ("dicom_Manufacturer", "V1"), ("dicom_Manufacturer", "V2")} <= attrs


def yaml_load(p: Path) -> dict:
    import yaml
    return yaml.safe_load(p.read_text())


def test_dicom_window_is_in_the_cache_key(tiny_run, tmp_path):
    """Another dicom_window is another cache: the second audit computes instead of reading the first's outputs."""
    data = tiny_run.parent / "data"
    man = pd.read_csv(data / "manifest.csv").iloc[:2]
    for i, name in enumerate(man["image"]):
        a = (np.asarray(Image.open(data / name).convert("L")).astype(np.uint16) * 16)
        write_dicom(data / f"k{i}.dcm", a, bits=12, WindowCenter=1000, WindowWidth=800)
    man.assign(image=[f"k{i}.dcm" for i in range(2)]).to_csv(data / "k.csv", index=False)
    out = tmp_path / "o"
    probs = []
    for w in ("header", "full"):
        _run_with_window(tiny_run, w)
        assert cli.main(["audit", "--run-dir", str(tiny_run), "--data", str(data / "k.csv"), "--out", str(out),
                         "--workers", "0", "--quiet", "--no-report", "--n-boot", "20", "--split", "all"]) == 0
        probs.append(pd.read_csv(out / "per_image.csv")[["p_a", "p_b", "p_c"]].to_numpy())
    assert len(list((out / "cache").glob("*/key.json"))) == 2
    assert not np.allclose(probs[0], probs[1])


CXR = SHARED_DATA / "cxr_covid_v7"


def _cxr_as_dicom(folder: Path, manufacturer, rng, n: int | None = None, side: int = 192) -> Path:
    """The shared radiographs as 8-bit MONOCHROME2 DICOMs (shrunk to `side` px on the long side, in tmp),
    labels covid / other, Manufacturer = manufacturer(label, i), StationName independent of the label,
    BurnedInAnnotation YES on a random third."""
    lab = pd.read_csv(CXR / "labels.csv")
    if n:
        lab = lab.iloc[:n]
    rows = []
    for i, r in lab.reset_index(drop=True).iterrows():
        im = Image.fromarray(load_rgb(CXR / r["image"])[..., 0])
        im.thumbnail((side, side), Image.BILINEAR)
        label = "covid" if str(r["finding"]).startswith("COVID-19") else "other"
        p = write_dicom(folder / f"im{i:03d}.dcm", np.asarray(im), Manufacturer=manufacturer(label, i),
                        StationName=f"ST{int(rng.integers(0, 3))}", ViewPosition=str(r["view"]).split()[0],
                        BurnedInAnnotation="YES" if rng.random() < 1 / 3 else "NO", PatientID=str(r["patientid"]))
        rows.append({"image": p.name, "label": label, "split": "all"})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


@pytest.mark.realdata
@pytest.mark.skipif(not (CXR / "labels.csv").is_file(), reason="needs ../shared/data/cxr_covid_v7")
def test_scan_names_a_manufacturer_that_marks_a_class_and_not_an_independent_one(tmp_path, capsys):
    """cxr_covid_v7 written as DICOM with two device headers. When one manufacturer marks the covid class the
    scan names `manufacturer` with V > 0.5 (terminal, scan.json, device_bias.md); the station, independent of the
    label, is not named; with the manufacturer drawn independently of the label it is not named either. The
    `text` region with presence_from: dicom_BurnedInAnnotation is present exactly where the header says YES."""
    preset = tmp_path / "p.yaml"
    preset.write_text("input: {size: 128}\nregions:\n  text: {presence_from: dicom_BurnedInAnnotation}\n")
    rng = np.random.default_rng(0)
    marked = _cxr_as_dicom(tmp_path / "marked", lambda lab, i: "AcmeRad" if lab == "covid" else "OtherCorp", rng)
    out = tmp_path / "s1"
    assert cli.main(["scan", "--data", str(marked), "--config", str(preset), "--out", str(out), "--workers", "0"]) == 0
    term = capsys.readouterr().out
    s = json.loads((out / "scan.json").read_text())
    dev = s["device"]
    named = {d["field"]: d for d in dev["named"]}
    assert "manufacturer" in named and named["manufacturer"]["v"] > 0.5, dev["named"]
    assert "station" not in named and "burned-in annotation" not in named
    assert dev["attributes"]["manufacturer"]["association"]["value"] == named["manufacturer"]["v"]
    lv = dev["attributes"]["manufacturer"]["levels"]
    assert lv["AcmeRad"]["by_label"]["covid"]["value"] == 1.0 and lv["AcmeRad"]["by_label"]["other"]["value"] == 0.0
    flat = " ".join(term.split())                 # the named field, its V, shown under the device section
    assert "Device and site by label" in flat and " ".join(named["manufacturer"]["text"].split()) in flat
    assert f"{named['manufacturer']['v']:.2f}" in named["manufacturer"]["text"]
    assert "| manufacturer: AcmeRad |" in (out / "device_bias.md").read_text()
    per = pd.read_csv(out / "scan.csv")
    assert (per["present_text"].astype(bool) == (per["dicom_BurnedInAnnotation"] == "YES")).all()
    assert "dicom_PatientID" not in per.columns and not per.astype(str).isin(
        pd.read_csv(CXR / "labels.csv")["patientid"].astype(str).map(lambda x: x if len(x) > 3 else "\0")).any().any()
    (tmp_path / "device_bias_marked.md").write_text((out / "device_bias.md").read_text())
    indep = _cxr_as_dicom(tmp_path / "indep", lambda lab, i: ["AcmeRad", "OtherCorp"][int(rng.integers(0, 2))], rng)
    out2 = tmp_path / "s2"
    assert cli.main(["scan", "--data", str(indep), "--config", str(preset), "--out", str(out2), "--workers", "0",
                     "--quiet"]) == 0
    dev2 = json.loads((out2 / "scan.json").read_text())["device"]
    assert "manufacturer" not in {d["field"] for d in dev2["named"]}
    assert dev2["attributes"]["manufacturer"]["association"]["lo"] <= 0.1


@pytest.mark.realdata
@pytest.mark.skipif(not (CXR / "labels.csv").is_file(), reason="needs ../shared/data/cxr_covid_v7")
def test_audit_of_dicom_copies_of_the_shared_pngs_equals_the_png_audit(tiny_run, tmp_path):
    """The PNG radiographs of cxr_covid_v7 and their DICOM copies (8-bit MONOCHROME2, RGB where the PNG holds
    colour; window = full range) give the same probabilities and maps, exactly."""
    lab = pd.read_csv(CXR / "labels.csv")
    pngs = lab[lab["image"].str.lower().str.endswith(".png")].iloc[:12]
    rows_png, rows_dcm = [], []
    for i, r in enumerate(pngs.itertuples()):
        a = load_rgb(CXR / r.image)
        g = (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all()
        p = write_dicom(tmp_path / "dcm" / f"c{i:02d}.dcm", a[..., 0] if g else a)
        cls = "abc"[i % 3]
        rows_png.append({"image": str(CXR / r.image), "label": cls, "split": "test"})
        rows_dcm.append({"image": str(p), "label": cls, "split": "test"})
    pd.DataFrame(rows_png).to_csv(tmp_path / "png.csv", index=False)
    pd.DataFrame(rows_dcm).to_csv(tmp_path / "dcm.csv", index=False)
    _run_with_window(tiny_run, "full")
    res = {}
    for k in ("png", "dcm"):
        out = tmp_path / f"o_{k}"
        assert cli.main(["audit", "--run-dir", str(tiny_run), "--data", str(tmp_path / f"{k}.csv"), "--out", str(out),
                         "--workers", "0", "--quiet", "--no-report", "--n-boot", "20"]) == 0
        res[k] = (pd.read_csv(out / "per_image.csv"), np.load(out / "cams.npz")["cam"])
    assert len(res["png"][0]) == len(res["dcm"][0]) == 12
    np.testing.assert_array_equal(res["dcm"][0][["p_a", "p_b", "p_c"]].to_numpy(),
                                  res["png"][0][["p_a", "p_b", "p_c"]].to_numpy())
    np.testing.assert_array_equal(res["dcm"][1], res["png"][1])
    assert set(res["dcm"][0]["src_format"]) == {"DICOM"} and set(res["png"][0]["src_format"]) == {"PNG"}


def test_scan_with_run_dir_gives_the_model_by_device_and_discover_reads_the_columns(tiny_run, tmp_path, capsys):
    """`scan --run-dir --positive a` on DICOMs: accuracy, sensitivity and specificity with vs without each
    manufacturer, values and Wilson CIs by hand from scan.csv, in scan.json and the terminal; discover's
    candidate attributes include each level of the header's text columns."""
    from audit.discover import _attributes
    data = tiny_run.parent / "data"
    man = pd.read_csv(data / "manifest.csv")
    rows = []
    for i, name in enumerate(man["image"]):
        a = np.asarray(Image.open(data / name).convert("L"))
        p = write_dicom(data / f"s{i}.dcm", a, Manufacturer="M1" if i < 4 else "M2", BurnedInAnnotation="NO")
        rows.append({**man.iloc[i].to_dict(), "image": p.name})
    pd.DataFrame(rows).to_csv(data / "dcm.csv", index=False)
    preset = tmp_path / "p.yaml"
    preset.write_text("input: {size: 64, dicom_window: full}\nscan: {min_n: 1}\n"
                      "regions:\n  text: {presence_from: dicom_BurnedInAnnotation}\n")
    out = tmp_path / "scan"
    assert cli.main(["scan", "--data", str(data / "dcm.csv"), "--config", str(preset), "--out", str(out),
                     "--workers", "0", "--run-dir", str(tiny_run), "--positive", "a"]) == 0
    term = capsys.readouterr().out
    assert "Model by device: this device vs the others" in term and "Device and site by label" in term
    s = json.loads((out / "scan.json").read_text())
    per = pd.read_csv(out / "scan.csv")
    bd = s["model"]["by_device"]
    e = bd["manufacturer=M1"]
    m1 = per["dicom_Manufacturer"] == "M1"
    assert e["with"]["n"] == 4 and e["without"]["n"] == 2

    def wilson_ci(k, n, z=1.959963984540054):  # Wilson 1927, written out here rather than taken from audit.stats
        c, h = (k / n + z * z / (2 * n)), z * np.sqrt(k / n * (1 - k / n) / n + z * z / (4 * n * n))
        return (c - h) / (1 + z * z / n), (c + h) / (1 + z * z / n)
    for st, m in (("with", m1), ("without", ~m1)):
        sub = per[m]
        pos, pp = sub["label"] == "a", sub["pred"] == "a"
        for k, (num, den) in {"accuracy": (int(sub["correct"].sum()), len(sub)),
                              "sensitivity": (int((pos & pp).sum()), int(pos.sum())),
                              "specificity": (int((~pos & ~pp).sum()), int((~pos).sum()))}.items():
            x = e[st][k]
            assert x["n"] == den, (st, k)
            if den:
                lo, hi = wilson_ci(num, den)
                assert (x["value"], x["lo"], x["hi"]) == pytest.approx((num / den, lo, hi)), (st, k)
    assert not per["present_text"].astype(bool).any()  # BurnedInAnnotation NO: known absent
    attrs = {(c, lv) for c, lv, _, _ in _attributes(per)}
    assert {("dicom_Manufacturer", "M1"), ("dicom_Manufacturer", "M2")} <= attrs


def test_scan_refused_cases_configured_fields_and_salted_patient_hash(tmp_path, monkeypatch, capsys):
    """`scan` on DICOMs (one PNG among them): the refused files are errors.csv rows with their one-line reason and
    the rest is scanned; the preset's `input.dicom_fields` decides the header columns; `--id-col
    dicom_patient_hash` finds the patient in two splits by HMAC(salt, PatientID) while the id itself, like every
    other identifying value, is in no output; without a salt the scan stops with one line (exit 2)."""
    from audit.dicom import PATIENT_HASH
    rng = np.random.default_rng(1)
    d = tmp_path / "data"
    d.mkdir()
    rows, written = [], []
    pids = ["P-0001", "P-0002", "P-0003", "P-0001", "P-0004"]  # P-0001 in train (0) and test (3)
    for i, pid in enumerate(pids):
        yy, xx = np.mgrid[:48, :48]
        a = ((np.sin(xx / (3 + i)) + np.cos(yy / (2 + i))) * 60 + 128 + rng.normal(0, 5, (48, 48))).clip(0, 255)
        p = write_dicom(d / (f"s{i}.dcm" if i != 4 else "s4"), a.astype(np.uint8), Manufacturer=f"M{i % 2}",
                        ViewPosition="PA", StationName="ST9", ManufacturerModelName="Model X",
                        BurnedInAnnotation="YES" if i in (1, 2) else "NO", **{**SECRETS, "PatientID": pid})
        written.append(p)
        rows.append({"image": p.name, "label": "ab"[i % 2], "split": "train" if i < 3 else "test"})
    Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(d / "plain.png")
    rows.append({"image": "plain.png", "label": "a", "split": "test"})
    refused = {"rtplan.dcm": "rtplan.dcm", "two.dcm": "SC_rgb_rle_2frame.dcm", "cut.dcm": "MR_truncated.dcm",
               "jls.dcm": "MR_small_jpeg_ls_lossless.dcm"}
    for n, src in refused.items():
        (d / n).write_bytes(Path(get_testdata_file(src)).read_bytes())
        rows.append({"image": n, "label": "b", "split": "test"})
    pd.DataFrame(rows).to_csv(d / "m.csv", index=False)
    preset = tmp_path / "p.yaml"
    preset.write_text("input: {size: 64, dicom_window: minmax, dicom_fields: [Manufacturer, ViewPosition, "
                      "StationName]}\nscan: {min_n: 1}\nregions:\n  text: {presence_from: dicom_BurnedInAnnotation}\n")
    _block_decoder(monkeypatch)
    monkeypatch.setenv("AUDIT_ID_SALT", "pepper-for-the-test")
    out = tmp_path / "scan"
    assert cli.main(["scan", "--data", str(d / "m.csv"), "--config", str(preset), "--out", str(out),
                     "--workers", "0", "--quiet", "--id-col", PATIENT_HASH]) == 0
    per = pd.read_csv(out / "scan.csv")
    assert sorted(per["image"].map(lambda p: Path(p).name)) == ["plain.png", "s0.dcm", "s1.dcm", "s2.dcm", "s3.dcm",
                                                                "s4"]
    # the configured fields, then the one the text region's presence_from asks for, then the signature
    assert [c for c in per.columns if c.startswith("dicom_")] == [
        PATIENT_HASH, "dicom_Manufacturer", "dicom_ViewPosition", "dicom_StationName", "dicom_BurnedInAnnotation",
        "dicom_signature"]
    dc = per[per["src_format"] == "DICOM"].sort_values("image_id")
    assert list(dc["present_text"].astype(bool)) == [False, True, True, False, False]  # the header's YES / NO
    assert dc["region_notes"].str.contains("presence from dicom_BurnedInAnnotation").all()
    png = per[per["src_format"] == "PNG"].iloc[0]  # no header: the detector decides
    assert "presence from" not in str(png.get("region_notes", ""))
    assert list(dc["dicom_Manufacturer"]) == ["M0", "M1", "M0", "M1", "M0"]
    assert set(dc["dicom_signature"]) == {"M0 / ST9", "M1 / ST9"}  # the configured signature fields only
    err = pd.read_csv(out / "errors.csv")
    reasons = dict(zip(err["image"].map(lambda p: Path(p).name), err["reason"]))
    assert set(reasons) == set(refused) and all("\n" not in r for r in reasons.values())
    assert "DICOM without PixelData" in reasons["rtplan.dcm"] and "multi-frame DICOM (2 frames)" in reasons["two.dcm"]
    assert "truncated DICOM" in reasons["cut.dcm"] and reasons["jls.dcm"].endswith(NO_DECODER_REASON)
    s = json.loads((out / "scan.json").read_text())
    assert s["data"]["n_scanned"] == 6 and s["data"]["n_skipped"] == 4
    assert s["data"]["input"]["dicom_window"] == "minmax"
    assert set(s["device"]["attributes"]) == {"manufacturer", "view", "station", "burned-in annotation",
                                              "acquisition signature"}
    ids = s["leakage"]["ids"]
    h = patient_hash("P-0001", "pepper-for-the-test")
    # the refused files' headers are read for their PatientID too (they are in the manifest's splits)
    n_refused_ids = len({str(pydicom.dcmread(d / n, stop_before_pixels=True, force=True).get("PatientID", ""))
                         for n in refused} - {""})
    assert ids["checked"] and ids["n_ids"] == 4 + n_refused_ids and ids["n_leaking"] == 1
    assert ids["leaking"][0]["id"] == h
    assert ids["leaking"][0]["splits"] == ["test", "train"]
    assert pd.read_csv(out / "leaking_ids.csv")["id"].tolist() == [h]
    secrets = _secret_strings(written) | set(pids)
    assert _assert_nothing_identifying(out, secrets) >= 4
    # no salt: one line naming the variable, exit 2, before any image is read
    monkeypatch.delenv("AUDIT_ID_SALT")
    capsys.readouterr()
    assert cli.main(["scan", "--data", str(d / "m.csv"), "--config", str(preset), "--out", str(tmp_path / "s2"),
                     "--workers", "0", "--quiet", "--id-col", PATIENT_HASH]) == 2
    e = capsys.readouterr().err.strip()
    assert e.startswith("error: --id-col dicom_patient_hash") and "\n" not in e and "AUDIT_ID_SALT" in e, e


def test_masks_reads_dicom_and_the_header_presence(tmp_path):
    """`cli.py masks` on DICOMs: each region exported, the text region's presence from BurnedInAnnotation
    (YES / NO, the field added to the preset's dicom_fields because the region asks for it), a refused file in
    regions.csv's status column with its one-line reason."""
    rng = np.random.default_rng(2)
    d = tmp_path / "data"
    rows = []
    for i, burned in enumerate(("YES", "NO")):
        p = write_dicom(d / f"m{i}.dcm", rng.integers(0, 256, (40, 40), dtype=np.uint8), BurnedInAnnotation=burned)
        rows.append({"image": p.name, "label": "a"})
    (d / "rtplan.dcm").write_bytes(Path(get_testdata_file("rtplan.dcm")).read_bytes())
    rows.append({"image": "rtplan.dcm", "label": "a"})
    pd.DataFrame(rows).to_csv(d / "m.csv", index=False)
    preset = tmp_path / "p.yaml"
    preset.write_text("input: {size: 64, dicom_fields: [Manufacturer]}\nregions:\n"
                      "  text: {presence_from: dicom_BurnedInAnnotation}\n  border: {width: 0.1}\n")
    out = tmp_path / "masks"
    with pytest.warns(Warning):  # the refused file is a MaskWarning
        assert cli.main(["masks", "--config", str(preset), "--data", str(d / "m.csv"), "--out", str(out)]) == 0
    t = pd.read_csv(out / "regions.csv")
    assert list(t["status"].iloc[:2]) == ["ok", "ok"]
    assert t["status"].iloc[2].startswith("unreadable") and "PixelData" in t["status"].iloc[2]
    assert list(t["text_present"].iloc[:2].astype(bool)) == [True, False]
    assert t["text_note"].iloc[:2].str.contains("presence from dicom_BurnedInAnnotation").all()
    assert (out / "m0" / "border.png").is_file() and (out / "m1" / "border.png").is_file()
