"""Device and site bias from DICOM headers (the scan's `device` section): each header field (manufacturer,
station, view, photometric interpretation, bits stored, pixel spacing tier, the acquisition signature) tested
against the label with the format-by-label machinery (`audit.formats.format_by_label`: shares with Wilson CIs,
bias-corrected Cramér's V with its CI), and with a model the accuracy, sensitivity and specificity by device
(`audit.association.model_by_artifact`). The header columns come from `audit.dicom.header_record`."""
from __future__ import annotations


#: field → the scan.csv column tested against the label (those present in a scan), in this order
DEVICE_COLUMNS = {"manufacturer": "dicom_Manufacturer", "model": "dicom_ManufacturerModelName",
                  "station": "dicom_StationName", "institution": "dicom_InstitutionName",
                  "modality": "dicom_Modality", "detector type": "dicom_DetectorType", "view": "dicom_ViewPosition",
                  "photometric interpretation": "dicom_PhotometricInterpretation", "bits stored": "dicom_BitsStored",
                  "pixel spacing tier": "dicom_spacing_tier", "burned-in annotation": "dicom_BurnedInAnnotation",
                  "acquisition signature": "dicom_signature"}
MISSING = "<missing>"
DEVICE_TITLE = ("Device and site by label (DICOM header; share of each class, 95% Wilson CI, %): a device that "
                "follows the label can be learned instead of the anatomy")


def _device_frame(per_image):
    """per_image with the device columns of non-DICOM rows and absent values as "<missing>"."""
    df = per_image.copy()
    for col in DEVICE_COLUMNS.values():
        if col in df:
            df[col] = df[col].astype(object).where(df[col].notna(), MISSING).astype(str)
    return df


def device_by_label(per_image, classes: list[str], min_n: int, alpha: float, n_boot: int, seed: int) -> dict | None:
    """scan.json's `device`: `audit.formats.format_by_label`'s table (per level n, overall share and share of
    each class with Wilson CIs; bias-corrected Cramér's V with a bootstrap CI) for each `DEVICE_COLUMNS` field
    present, plus `named`: the fields whose V's CI lower end is above 0.1, strongest first, each in words.
    None when the scan holds no DICOM header column."""
    from .formats import association_strong, format_by_label
    cols = {k: c for k, c in DEVICE_COLUMNS.items() if c in per_image}
    if not cols:
        return None
    out = format_by_label(_device_frame(per_image), classes, min_n, alpha, n_boot, seed, columns=cols)
    named = []
    for a, e in out["attributes"].items():
        cv = e["association"]
        if association_strong(cv):
            n = sum(x["n"] for x in e["levels"].values())
            named.append({"field": a, "column": e["column"], "v": cv["value"], "lo": cv["lo"], "hi": cv["hi"],
                          "text": f"{a} follows the label: Cramér's V {cv['value']:.2f} [{cv['lo']:.2f}, "
                                  f"{cv['hi']:.2f}], n={n}, {len(e['levels'])} levels ({e['column']})"})
    named.sort(key=lambda d: -d["lo"])
    out["named"] = named
    out["reference"] = "Zech et al. 2018, PLoS Med 15:e1002683; DeGrave et al. 2021, Nat Mach Intell 3:610"
    return out


def model_by_device(per_image, device: dict | None, positive: str | None, min_n: int, alpha: float, n_boot: int,
                    seed: int, max_levels: int = 6) -> dict | None:
    """The scan's with-vs-without table (`audit.association.model_by_artifact`: accuracy, sensitivity, specificity with
    Wilson CIs, mean P(positive) of negatives with a bootstrap CI) for each level of each device field: "with"
    = the images of that device, "without" = the others. Keys "field=level"; the `max_levels` largest levels
    of each field."""
    if not device or not device.get("attributes") or "pred" not in per_image:
        return None
    from .association import model_by_artifact
    df = _device_frame(per_image)
    names = []
    for a, e in device["attributes"].items():
        for lv in list(e["levels"])[:max_levels]:
            name = f"{a}={lv}"
            df[f"present_{name}"] = (df[e["column"]] == lv).astype("boolean")
            names.append(name)
    return model_by_artifact(df, names, positive, min_n, alpha, n_boot, seed)


def device_text(device: dict | None) -> list[str]:
    """The named fields in words (terminal lines)."""
    if not device:
        return []
    if not device["named"]:
        return ["no device or site field follows the label clearly (every Cramér's V CI reaches 0.1)"]
    return [d["text"] for d in device["named"]]


def device_markdown(device: dict | None, classes: list[str], max_levels: int = 6) -> str:
    """The device-by-label table as Markdown (device_bias.md; the README's table)."""
    if not device or not device["attributes"]:
        return ""

    def pct(e):
        if not e or e.get("too_small") or e.get("value") is None or e["value"] != e["value"]:
            return "too small" if e and e.get("too_small") else "n/a"
        return f"{100 * e['value']:.0f} [{100 * e['lo']:.0f}, {100 * e['hi']:.0f}]"
    lines = ["| field: level | n | overall % | " + " | ".join(f"{c} %" for c in classes) + " | Cramér's V [95% CI] |",
             "|---|---:|---:|" + "---:|" * len(classes) + "---:|"]
    for a, e in device["attributes"].items():
        cv = e["association"]
        for i, (x, lv) in enumerate(list(e["levels"].items())[:max_levels]):
            v = f"{cv['value']:.2f} [{cv['lo']:.2f}, {cv['hi']:.2f}]" if i == 0 else ""
            lines.append(f"| {a + ': ' if i == 0 else ''}{x} | {lv['n']} | {pct(lv['prevalence'])} | "
                         + " | ".join(pct(lv["by_label"].get(c)) for c in classes) + f" | {v} |")
    return "\n".join(lines) + "\n"
