"""DICOM input: pixels through the Modality LUT, the VOI LUT / window and MONOCHROME1 inversion, and the header's
device and acquisition fields as `dicom_<Keyword>` columns (never the identifying ones).

Needs the optional extra `dicom` (`pip install -e '.[dicom]'`: pydicom and the pylibjpeg decoders for JPEG
baseline / extended / lossless / JPEG-LS (libjpeg), JPEG 2000 (openjpeg) and RLE). Without it a DICOM file is
refused with one line naming the extra.

The pixel path of `read_dicom` (DICOM PS3.3 C.11 / PS3.4 N.2), for one frame of stored values X (H×W):
  1. Modality LUT: RescaleSlope · X + RescaleIntercept, or the Modality LUT Sequence (pydicom's
     `apply_modality_lut`);
  2. VOI (`input.dicom_window`), to y in [0, 1]:
     "header"  the VOI LUT Sequence's first LUT, else the first WindowCenter/WindowWidth with VOILUTFunction
               LINEAR (PS3.3 C.11.2.1.2.1: y = (x − (c − 0.5)) / (w − 1) + 0.5), LINEAR_EXACT (x − c) / w + 0.5, or
               SIGMOID 1 / (1 + exp(−4 (x − c) / w)); a file with neither falls back to "minmax" (info says so);
     "minmax"  the image's own min..max after the Modality LUT;
     "full"    the stored bit range (0 .. 2^BitsStored − 1, or signed) through the Modality LUT: for an 8-bit
               DICOM copy of an 8-bit image y · 255 gives back the same pixels;
     "percentile:LOW,HIGH"  the image's LOW-th..HIGH-th percentiles (e.g. percentile:0.5,99.5);
  3. MONOCHROME1: y → 1 − y, so that bone is bright as in MONOCHROME2;
  4. uint8 round(255 · y), replicated to RGB; colour images (RGB, YBR converted to RGB by pydicom) are taken
     as stored (8-bit) or scaled by their stored bit range.
The result then takes the same resize / crop as every other image (`audit.preprocess.image_to_grid`).
Refused, each with a one-line ValueError (the audit writes it to errors.csv and goes on): multi-frame files, no
PixelData, truncated pixel data, a compressed transfer syntax without an installed decoder.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path

import numpy as np

EXTRA = "pip install -e '.[dicom]'"
NO_EXTRA = f"a DICOM file, and pydicom is not installed: install the DICOM extra ({EXTRA})"
WINDOWS = ("header", "minmax", "full")  # and "percentile:LOW,HIGH"
SUFFIXES = (".dcm", ".dicom")

#: the default `input.dicom_fields` for radiographs: device, site and acquisition, never the patient
DEFAULT_FIELDS = ("Manufacturer", "ManufacturerModelName", "StationName", "InstitutionName", "Modality",
                  "DetectorType", "ViewPosition", "PhotometricInterpretation", "BitsStored", "PixelSpacing",
                  "BurnedInAnnotation")
#: the fields whose combination is the acquisition signature (`dicom_signature`), when configured
SIGNATURE_FIELDS = ("Manufacturer", "ManufacturerModelName", "StationName", "DetectorType", "Modality")
#: upper bounds (exclusive, mm) of the pixel-spacing tiers (`dicom_spacing_tier`)
SPACING_TIERS = (0.1, 0.15, 0.2)
_ID_VRS = {"PN", "DA", "DT", "TM", "UI", "LT", "ST", "UT", "SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "UR"}
_ID_NAME = re.compile(r"^(Patient|Other|Accession|Referring|Requesting|Performing|Operator|Physician|Responsible)"
                      r"|ID$|IDs$|Address|Telephone|Physician|Comments|Date|Time")
PATIENT_HASH = "dicom_patient_hash"  # the salted-hash id column (`patient_hash`; salt in AUDIT_ID_SALT)


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise ValueError(NO_EXTRA) from None
    return pydicom


def is_dicom(path: str | Path, head: bytes | None = None) -> bool:
    """A `.dcm` / `.dicom` file, or any file (suffix-less included) with the "DICM" preamble at byte 128."""
    if str(path).lower().endswith(SUFFIXES):
        return True
    if head is None:
        try:
            with open(path, "rb") as f:
                head = f.read(132)
        except OSError:
            return False
    return head[128:132] == b"DICM"


def window_value(v: object) -> str:
    """`input.dicom_window` checked: "header", "minmax", "full" or "percentile:LOW,HIGH" with 0 ≤ LOW < HIGH ≤ 100.
    Raises ValueError with one line naming the option."""
    from .errors import ConfigError
    if isinstance(v, str) and v in WINDOWS:
        return v
    if isinstance(v, str) and v.startswith("percentile:"):
        try:
            lo, hi = (float(x) for x in v.split(":", 1)[1].split(","))
        except ValueError:
            lo = hi = float("nan")
        if 0 <= lo < hi <= 100:
            return v
    raise ConfigError(f"input.dicom_window: expected one of {list(WINDOWS)} or 'percentile:LOW,HIGH' "
                      f"(0 ≤ LOW < HIGH ≤ 100), got {v!r}")


def fields_value(v: object) -> tuple[str, ...]:
    """`input.dicom_fields` checked: a list of DICOM keywords, none of them identifying (`identifying`)."""
    from .errors import ConfigError
    if not (isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)):
        raise ConfigError(f"input.dicom_fields: expected a list of DICOM keywords, got {v!r}")
    bad = [x for x in v if identifying(x)]
    if bad:
        raise ConfigError(f"input.dicom_fields: {bad} identify a patient, a date or a study (or are free text): "
                          "they are never written; a salted hash of PatientID is the id column "
                          f"{PATIENT_HASH} (docs/dicom.md)")
    return tuple(v)


def fields_for_regions(fields: tuple[str, ...] | None, regions) -> tuple[str, ...] | None:
    """The header keywords to read: `fields` (None = `DEFAULT_FIELDS`) plus the keyword of every region's
    `presence_from: dicom_<Keyword>` that is not among them, so that a region asking for a header field gets it
    even when the preset's `input.dicom_fields` leaves it out. Returns `fields` unchanged when nothing is added.
    Raises ConfigError (one line naming the region's option) for an identifying keyword."""
    from .errors import ConfigError
    base = tuple(fields) if fields is not None else DEFAULT_FIELDS
    extra: list[str] = []
    for name, opts in (regions or {}).items():
        col = (opts or {}).get("presence_from") if isinstance(opts, dict) else None
        if not (isinstance(col, str) and col.startswith("dicom_")) or col == PATIENT_HASH:
            continue
        k = col[len("dicom_"):]
        if k in ("spacing_tier", "signature"):
            continue  # derived columns, there whenever their fields are
        if identifying(k):
            raise ConfigError(f"regions.{name}.presence_from: {col} is identifying (or not a DICOM keyword) and "
                              "is never read from the header")
        if k not in base and k not in extra:
            extra.append(k)
    return fields if not extra else base + tuple(extra)


def identifying(keyword: str) -> bool:
    """Whether a keyword is kept out of every output: person names, dates and times, UIDs, free text, sequences
    and binary values (by VR), and patient / accession / physician / operator fields, ids and addresses (by name).
    An unknown keyword counts as identifying (it is not in the dictionary, so its VR cannot be checked)."""
    try:
        from pydicom.datadict import dictionary_VR, tag_for_keyword
        tag = tag_for_keyword(keyword)
        if tag is None:
            return True
        vr = dictionary_VR(tag)
    except ImportError:  # without pydicom the names alone decide
        vr = ""
    return vr in _ID_VRS or bool(_ID_NAME.search(keyword))


def _text(v) -> str | None:
    if v is None:
        return None
    if hasattr(v, "__iter__") and not isinstance(v, (str, bytes)):
        v = "\\".join(str(x) for x in v)
    s = str(v).strip()
    return s or None


def spacing_tier(mm: float | None) -> str:
    """Pixel spacing (mm) in tiers: "<0.1 mm", "0.1–0.149 mm", "0.15–0.199 mm", "≥0.2 mm", "unknown"."""
    if mm is None or not np.isfinite(mm):
        return "unknown"
    lo = None
    for hi in SPACING_TIERS:
        if mm < hi:
            return f"<{hi} mm" if lo is None else f"{lo}–{hi - 0.001:g} mm"
        lo = hi
    return f"≥{SPACING_TIERS[-1]} mm"


def header_record(ds, fields: tuple[str, ...] = DEFAULT_FIELDS) -> dict:
    """The `dicom_<Keyword>` columns of one dataset (text; None when absent), `dicom_spacing_tier` when
    PixelSpacing is asked for (ImagerPixelSpacing when PixelSpacing is absent) and `dicom_signature` (the
    `SIGNATURE_FIELDS` among `fields`, joined by " / ", "?" for an absent one). Identifying keywords are
    skipped even when asked for."""
    out: dict = {}
    for k in fields:
        if identifying(k):
            continue
        v = ds.get(k)
        v = getattr(v, "value", v)
        if k == "PixelSpacing":
            sp = v if v is not None else getattr(ds.get("ImagerPixelSpacing"), "value", None)
            try:
                mm = float(sp[0]) if sp is not None else None
            except (TypeError, ValueError, IndexError):
                mm = None
            out["dicom_PixelSpacing"] = f"{mm:.3g}" if mm is not None else None
            out["dicom_spacing_tier"] = spacing_tier(mm)
            continue
        out[f"dicom_{k}"] = _text(v)
    sig = [k for k in SIGNATURE_FIELDS if k in fields]
    if sig:
        out["dicom_signature"] = " / ".join(out.get(f"dicom_{k}") or "?" for k in sig)
    return out


def patient_hash(patient_id: str | None, salt: str | None = None) -> str | None:
    """HMAC-SHA256 of PatientID keyed by `salt` (default: the AUDIT_ID_SALT environment variable), 16 hex digits:
    the same patient gives the same value within a dataset, the id itself cannot be read back without the salt.
    Raises ValueError without a salt (an unsalted hash of a short id is reversible by enumeration)."""
    salt = salt if salt is not None else os.environ.get("AUDIT_ID_SALT")
    if not salt:
        raise ValueError(f"{PATIENT_HASH}: set a secret salt in the environment variable AUDIT_ID_SALT")
    if patient_id is None or not str(patient_id).strip():
        return None
    return hmac.new(salt.encode(), str(patient_id).strip().encode(), hashlib.sha256).hexdigest()[:16]


def add_patient_hash(rows, salt: str | None = None):
    """The manifest rows with a `dicom_patient_hash` column read from each DICOM's header (PatientID, salted;
    None for non-DICOM or unreadable files), for `--id-col dicom_patient_hash`."""
    pydicom = _pydicom()
    vals = []
    for p in rows["image"]:
        h = None
        if is_dicom(p):
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True, force=True, specific_tags=["PatientID"])
                h = patient_hash(getattr(ds, "PatientID", None), salt)
            except ValueError as e:
                if "AUDIT_ID_SALT" in str(e):
                    raise
            except Exception:
                h = None
        vals.append(h)
    rows = rows.copy()
    rows[PATIENT_HASH] = vals
    return rows


def _decode_error(ds, e: Exception) -> str:
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if ts is not None and ts.is_compressed:
        from pydicom.pixels import get_decoder
        try:
            ok = get_decoder(ts).is_available
        except NotImplementedError:
            ok = False
        if not ok:
            return (f"compressed transfer syntax {ts.name} ({ts}) and no decoder for it installed: "
                    f"install the DICOM extra ({EXTRA})")
    if "less than expected" in msg or "truncat" in msg.lower():
        return f"truncated DICOM: {msg[:160]}"
    return f"undecodable DICOM pixel data: {msg[:200]}"


def _window(x: np.ndarray, ds, window: str, stored_range: tuple[float, float]) -> tuple[np.ndarray, str]:
    """x (float64 H×W, after the Modality LUT) → y in [0, 1] by `window`; also says which rule was applied."""
    if window == "header":
        seq = ds.get("VOILUTSequence")
        if seq:
            item = seq[0]
            n, first, bits = (int(v) for v in item.LUTDescriptor)
            n = n or 65536
            lut = np.frombuffer(item.LUTData, dtype=np.uint16) if isinstance(item.LUTData, bytes) \
                else np.asarray(item.LUTData, dtype=np.float64)
            lut = np.asarray(lut[:n], dtype=np.float64)
            idx = np.clip(np.round(x - first), 0, len(lut) - 1).astype(np.int64)
            return lut[idx] / float(2 ** bits - 1), "VOI LUT"
        wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
        if wc is not None and ww is not None and wc != "" and ww != "":
            first = lambda v: float(v[0]) if hasattr(v, "__iter__") and not isinstance(v, str) else float(v)  # noqa
            c, w = first(wc), first(ww)
            fn = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
            if fn == "SIGMOID" and w > 0:
                y = 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
            elif fn == "LINEAR_EXACT" and w > 0:
                y = (x - c) / w + 0.5
            elif w >= 1:
                fn = "LINEAR"
                y = (x - (c - 0.5)) / (w - 1) + 0.5 if w > 1 else (x > c - 0.5).astype(np.float64)
            else:
                raise ValueError(f"invalid window: WindowWidth {w} (must be ≥ 1, > 0 for {fn})")
            return np.clip(y, 0.0, 1.0), f"window C={c:g} W={w:g} {fn}"
        window, why = "minmax", "minmax (no window in the header)"
    else:
        why = window
    if window == "minmax":
        lo, hi = float(x.min()), float(x.max())
    elif window == "full":
        lo, hi = stored_range
    else:  # percentile:LOW,HIGH
        p = [float(v) for v in window.split(":", 1)[1].split(",")]
        lo, hi = (float(v) for v in np.percentile(x, p))
    y = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return np.clip(y, 0.0, 1.0), why


def read_dicom(path: str | Path, window: str = "header", info: dict | None = None,
               fields: tuple[str, ...] = DEFAULT_FIELDS) -> np.ndarray:
    """One DICOM file → uint8 H×W×3 RGB by the module's pixel path.

    window: `input.dicom_window` (see the module docstring). info: when given, receives "format" ("DICOM"),
    "mode" ("L" for grayscale, "RGB"), "dicom" (the `header_record` of `fields`), "dicom_window" (the rule
    applied, e.g. "window C=2048 W=4096 LINEAR"), "bits_stored". Raises ValueError with one line for the refused
    cases: pydicom missing, not readable as DICOM, no PixelData, multi-frame, truncated, no decoder."""
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError
    try:
        ds = pydicom.dcmread(path, force=True)
    except InvalidDicomError as e:
        raise ValueError(f"not a readable DICOM file: {str(e).splitlines()[0][:160]}") from None
    except (EOFError, OSError) as e:
        raise ValueError(f"truncated DICOM (header): {type(e).__name__}: {str(e)[:120]}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ValueError("DICOM without PixelData (no image in this file: a report, a structured report or "
                         "a presentation state)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"multi-frame DICOM ({frames} frames): the auditor reads single-frame images; "
                         "export one frame per file")
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        from pydicom.uid import ImplicitVRLittleEndian
        ds.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises ValueError, RuntimeError, NotImplementedError, ... by plugin
        raise ValueError(_decode_error(ds, e)) from None
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if spp == 3 or arr.ndim == 3:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"unexpected DICOM pixel array of shape {arr.shape}")
        if arr.dtype == np.uint8:
            rgb, how = np.ascontiguousarray(arr), "as stored (8-bit colour)"
        else:
            rgb = (np.clip(arr.astype(np.float64) / float(2 ** bits - 1), 0, 1) * 255).round().astype(np.uint8)
            how = f"divided by 2^{bits} − 1 (colour)"
        mode = "RGB"
    else:
        from pydicom.pixels import apply_modality_lut
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        x = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        r = np.asarray(apply_modality_lut(np.array([lo, hi], dtype=np.int64), ds), dtype=np.float64)
        y, how = _window(x, ds, window, (float(r.min()), float(r.max())))
        if photometric == "MONOCHROME1":
            y = 1.0 - y
            how += ", MONOCHROME1 inverted"
        g = (y * 255.0).round().astype(np.uint8)
        rgb, mode = np.repeat(g[..., None], 3, axis=2), "L"
    if info is not None:
        info.update(format="DICOM", mode=mode, dicom=header_record(ds, fields), dicom_window=how,
                    bits_stored=bits)
    return rgb


def dicom_columns(df) -> list[str]:
    """The `dicom_*` columns of a per-image table, in order (the hashed id excluded)."""
    return [c for c in df.columns if str(c).startswith("dicom_") and c != PATIENT_HASH]


def write_dicom(path: Path, arr: np.ndarray, bits: int | None = None, photometric: str | None = None,
                signed: bool = False, preamble: bool = True, **tags) -> Path:
    """Write a single-frame DICOM (Secondary Capture, explicit VR little endian) holding `arr` (H×W grayscale
    uint8 / uint16 / int16, or H×W×3 RGB uint8) as stored values, with `tags` (keyword=value); for tests and
    benchmarks. bits: BitsStored (default all bits). preamble=False writes no preamble nor file meta."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
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
