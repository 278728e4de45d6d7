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
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid  # noqa: E402

import cli  # noqa: E402
from audit.dicom import header_record, identifying, is_dicom, patient_hash, read_dicom, spacing_tier  # noqa: E402
from audit.errors import ConfigError  # noqa: E402
from audit.preprocess import InputSpec, load_rgb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_dicom(path: Path, arr: np.ndarray, bits: int | None = None, photometric: str | None = None,
                signed: bool = False, preamble: bool = True, **tags) -> Path:
    """A single-frame DICOM holding `arr` (H×W grayscale, or H×W×3 RGB uint8) as stored values, with `tags`."""
    arr = np.asarray(arr)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = arr.shape[:2]
    rgb = arr.ndim == 3
    ds.SamplesPerPixel = 3 if rgb else 1
    if rgb:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric or ("RGB" if rgb else "MONOCHROME2")
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=preamble)
    return path


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
    assert info["dicom_window"] == "minmax (no window in the header), MONOCHROME1 inverted"


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
    assert out.stdout.strip() == ("compressed transfer syntax JPEG-LS Lossless Image Compression "
                                  "(1.2.840.10008.1.2.4.80) and no decoder for it installed: install the DICOM extra "
                                  "(pip install -e '.[dicom]')"), out.stderr
    p = write_dicom(tmp_path / "x.dcm", np.zeros((4, 4), np.uint8))
    out = subprocess.run([sys.executable, "-c", _NO_PYDICOM, str(p)], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.stdout.strip() == ("a DICOM file, and pydicom is not installed: install the DICOM extra "
                                  "(pip install -e '.[dicom]')"), out.stderr


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
                   "dicom_BurnedInAnnotation": "YES", "dicom_signature": "ACME | RAD1"}
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
