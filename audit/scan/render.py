"""The scan's terminal tables (`scan_renderable`, `render_scan`) and the device tables."""
from __future__ import annotations



from ..association import fmt_or, fmt_p, fmt_pct
from ..stats import fmt_estimate
from ..dicom_bias import DEVICE_TITLE, device_text
from .core import ScanResult, differ


def _fe(e: dict | None, pct: bool = True) -> str:
    """An estimate in the scan's tables: a share by default ("41% [35%,47%]"; `audit.stats.fmt_estimate`)."""
    return fmt_estimate(e, pct=pct)

def fmt_v(cv: dict) -> str:
    """Cramér's V with its bootstrap CI over its p, for the terminal ("0.21 [0.15,0.27]" / "p 0.00025*"); "*"
    marks a Monte Carlo p (sparse table, see `cramers_v`)."""
    if cv.get("value") is None:
        return "n/a"
    ci = f" [{cv['lo']:.2f},{cv['hi']:.2f}]" if cv.get("lo") is not None and cv.get("hi") is not None else ""
    return f"{cv['value']:.2f}{ci}\np {fmt_p(cv['p'])}{'*' if cv.get('p_method') == 'monte carlo' else ''}"


_MC_NOTE = ("* p by Monte Carlo over tables with the same margins: too many expected counts < 5 for the χ² "
            "approximation. V is bias-corrected (Bergsma 2013): the plain V of small groups reads high by chance")


def _pair_notes(p: dict, nd: dict) -> str:
    """" · patientid 178 ≠ 97 · labels COVID-19 ≠ 'COVID-19, ARDS'" for a near-duplicate pair that disagrees."""
    out = ""
    if nd.get("id_col") and differ(p.get("id_a"), p.get("id_b")):
        out += f" · {nd['id_col']} {p['id_a']} ≠ {p['id_b']}"
    if differ(p.get("label_a"), p.get("label_b")):
        out += f" · labels {_lab(p['label_a'])} ≠ {_lab(p['label_b'])}"
    return out


def _lab(label) -> str:
    """A class label as printed in a comma-separated list: quoted when it holds a comma itself."""
    s = str(label)
    return repr(s) if "," in s else s


def _in_split(split: str, nd: dict) -> str:
    return "" if nd["scope"].endswith("(no splits)") else f" ({split})"


def scan_renderable(s: dict, out_dir: str | None = None, max_rows: int = 12):
    """A rich Group of the scan's tables (reads scan.json's dict; recomputes nothing)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    d = s["data"]
    parts = [Text.assemble(("Dataset scan ", "bold"), f"· {d['n_scanned']} of {d['n_rows']} images",
                           (f" · skipped {d['n_skipped']} unreadable (errors.csv)" if d["n_skipped"] else ""),
                           " · labels " + ", ".join(f"{_lab(k)} {v}" for k, v in d["label_counts"].items()))]
    min_n = s["options"]["min_n"]
    big = [c for c in d["classes"] if d["label_counts"][c] >= min_n]
    classes = big[:6]
    hidden = [c for c in d["classes"] if c not in classes]
    t = Table(title="Artifact prevalence (95% Wilson CI, %)", title_justify="left", pad_edge=False,
              box=box.SIMPLE_HEAD, padding=(0, 1))
    # two lines a row: the estimate over its CI, the artifact over its source (detector, file, flag)
    for c, j in (("artifact", "left"), ("present", "right"), ("overall", "right"),
                 *((f"{c}", "right") for c in classes), ("Cramér's V", "right")):
        t.add_column(c, justify=j, no_wrap=c == "artifact", min_width=9 if c not in ("artifact", "present") else None)
    for a, e in s["artifacts"].items():
        t.add_row(Text.assemble(a, "\n", (e["source"], "dim")), f"{e['n_present']}/{e['n_known']}",
                  _fe(e["prevalence"]), *(_fe(e["by_label"].get(c)) for c in classes),
                  fmt_v(e["label_association"]))
    parts.append(t)
    if any(e["label_association"].get("p_method") == "monte carlo" for e in s["artifacts"].values()):
        parts.append(Text(_MC_NOTE, style="dim"))
    if hidden:
        parts.append(Text(f"labels not shown as columns: {', '.join(map(_lab, hidden[:8]))}"
                          f"{' …' if len(hidden) > 8 else ''}"
                          f" (n < {min_n} or beyond 6 columns; all of them are in scan.json)", style="dim"))
    assoc = [e for e in s["associations"] if not e["too_small"] and e["odds_ratio"]["value"] is not None]
    if assoc:
        t = Table(title="Label associations, strongest first (odds ratio, 95% CI, Fisher exact p)",
                  title_justify="left", pad_edge=False)
        for c, j in (("artifact", "left"), ("class", "left"), ("vs", "left"), ("in class", "right"),
                     ("in other", "right"), ("OR [95% CI]", "right"), ("p", "right")):
            t.add_column(c, justify=j, no_wrap=True)
        for e in assoc[:max_rows]:
            o = e["odds_ratio"]
            strong = o["lo"] is not None and (o["lo"] > 1 or o["hi"] < 1)
            t.add_row(Text(e["artifact"]), Text(e["class"]), Text(e["vs"]),
                      f"{fmt_pct(e['prevalence_class'])} of {e['n_class']}",
                      f"{fmt_pct(e['prevalence_rest'])} of {e['n_rest']}",
                      f"{fmt_or(o['value'])} [{fmt_or(o['lo'])}, {fmt_or(o['hi'])}]", fmt_p(o["p"]),
                      style="bold red" if strong else "")
        parts.append(t)
        parts.append(Text("\n".join("• " + e["text"] for e in assoc[:3])))
    small = [e for e in s["associations"] if e["too_small"]]
    if small:
        per_art: dict = {}
        for e in small:
            per_art.setdefault(e["artifact"], []).append(e["class"])
        which = "; ".join(f"{a}: {', '.join(map(_lab, sorted(cs)))}" for a, cs in per_art.items())
        parts.append(Text(f"{len(small)} class comparison(s) too small (< {s['options']['min_n']} images in the "
                          f"class or in the rest, of those whose artifact is known): {which}", style="dim"))
    parts += format_renderables(s.get("format"), classes, max_levels=6)
    parts += device_renderables(s, classes)
    for col, per_a in (s.get("by") or {}).items():
        # groups as rows (a metadata column can have many values), largest first; artifacts as columns
        sizes: dict = {}
        for e in per_a.values():
            for g, est in e["groups"].items():
                sizes[g] = max(sizes.get(g, 0), int((est or {}).get("n") or 0))
        groups = sorted(sizes, key=lambda g: (-sizes[g], str(g)))
        shown = groups[:max_rows]
        t = Table(title=f"Prevalence by {col}", title_justify="left", pad_edge=False, box=box.SIMPLE_HEAD,
                  padding=(0, 1))
        t.add_column(col, no_wrap=True)
        t.add_column("n", justify="right")
        for a in per_a:
            t.add_column(a, justify="right", no_wrap=True)
        for g in shown:
            t.add_row(Text(str(g)), str(sizes[g]), *(_fe(e["groups"].get(g)) for e in per_a.values()))
        t.add_row(Text("Cramér's V\n(95% CI), p", style="bold"), "",
                  *(fmt_v(e["association"]) for e in per_a.values()))
        parts.append(t)
        if len(groups) > len(shown):
            rest = groups[len(shown):]
            parts.append(Text(f"{len(rest)} smaller {col} group(s) not shown ({sum(sizes[g] for g in rest)} images; "
                              "all in scan.json): " + ", ".join(map(str, rest)), style="dim"))
        if any(e["association"].get("p_method") == "monte carlo" for e in per_a.values()):
            parts.append(Text(_MC_NOTE, style="dim"))
    lk = s["leakage"]
    ids = lk["ids"]
    if ids.get("checked"):
        style = "bold red" if ids["n_leaking"] else "green"
        parts.append(Text(f"Split leakage by {ids['id_col']}: {ids['n_leaking']} of {ids['n_ids']} ids in more than "
                          "one split" + "".join(f"\n  {x['id']}: {', '.join(x['splits'])}" for x in ids["leaking"][:5]),
                          style=style))
    else:
        parts.append(Text(f"Split leakage by id: not checked ({ids['note']})", style="dim"))
    nd = lk["near_duplicates"]
    disagree = [f"{nd['n_different_ids']} under different {nd['id_col']}" if nd.get("n_different_ids") else "",
                f"{nd['n_different_labels']} with different labels" if nd.get("n_different_labels") else ""]
    disagree = [x for x in disagree if x]
    det = (f", confirmed by the {nd['detail_bits']}-bit detail hash ≤ {nd['detail_threshold']}"
           if nd.get("detail_bits") else "")
    unconf = (f"\n  {nd['n_unconfirmed']} more pHash candidate pair(s) share a layout but differ in detail: "
              "different images, or cropped or marked-up copies; not counted, check by eye ("
              + (f"{nd['sheet']}, " if nd.get("sheet") else "") + "near_duplicates.csv: confirmed = False)"
              if nd.get("n_unconfirmed") else "")
    parts.append(Text(f"Near-duplicate images {nd['scope']} (pHash, Hamming ≤ {nd['threshold']} of {nd['bits']} "
                      f"bits{det}): {nd['n_pairs']} pair(s)" + (f" ({'; '.join(disagree)})" if disagree else "")
                      + "".join(f"\n  {p['image_id_a']}{_in_split(p['split_a'], nd)} ~ {p['image_id_b']}"
                                f"{_in_split(p['split_b'], nd)}: Hamming {p['distance']}{_pair_notes(p, nd)}"
                                for p in nd["pairs"][:5]) + unconf,
                      style="bold red" if nd["n_pairs"] else ("yellow" if nd.get("n_unconfirmed") else "green")))
    mo = s.get("model")
    if mo:
        pos = mo["positive"]
        t = Table(title=f"Model {mo['model']} with vs without each artifact (accuracy {_fe(mo['accuracy'])})"
                  + (f"; positive class {pos}" if pos else ""), title_justify="left", pad_edge=False)
        cols = ["artifact", "stratum", "n", "accuracy"] + (["sensitivity", "specificity", f"P({pos}) negatives"]
                                                           if pos else [])
        for c in cols:
            t.add_column(c, justify="left" if c in ("artifact", "stratum") else "right", no_wrap=True)
        for a, e in mo["by_artifact"].items():
            for st in ("with", "without"):
                x = e[st]
                extra = [_fe(x["sensitivity"]), _fe(x["specificity"]), _fe(x["mean_p_positive_neg"], pct=False)] \
                    if pos else []
                t.add_row(Text(a if st == "with" else ""), st, str(x["n"]), _fe(x["accuracy"]), *extra)
        parts.append(t)
    if out_dir:
        nd, ids = s["leakage"]["near_duplicates"], s["leakage"]["ids"]
        extra = ([", errors.csv"] if d["n_skipped"] else []) \
            + ([", near_duplicates.csv"] if nd.get("n_candidates", nd.get("n_pairs")) else []) \
            + ([f", {nd['sheet']}"] if nd.get("sheet") else []) + ([", leaking_ids.csv"] if ids.get("n_leaking") else [])
        parts.append(Text(f"Files: {out_dir}/ (scan.csv, scan.json, contact_<artifact>.png{''.join(extra)})",
                          style="dim"))
    return Group(*parts)


def format_renderables(fmt: dict | None, classes: list[str], max_levels: int = 6, title: str | None = None,
                        first_col: str = "format") -> list:
    """The image-format table (levels as rows: n, overall share, share of each shown class, the attribute's
    Cramér's V on its first row, red when its CI's lower end is above 0.1) and its plain-text lines."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from ..formats import association_strong, format_text
    if not fmt:
        return []
    out: list = []
    if fmt["attributes"]:
        t = Table(title=title or "Image format by label (share of each class, 95% Wilson CI, %): a format that "
                        "follows the label can be learned instead of the anatomy", title_justify="left", pad_edge=False,
                  box=box.SIMPLE_HEAD, padding=(0, 1))
        for c, j in ((first_col, "left"), ("n", "right"), ("overall", "right"), *((c, "right") for c in classes),
                     ("Cramér's V", "right")):
            t.add_column(c, justify=j, no_wrap=c == first_col, min_width=9 if c not in (first_col, "n") else None)
        for a, e in fmt["attributes"].items():
            strong = association_strong(e["association"])
            for i, (x, lv) in enumerate(list(e["levels"].items())[:max_levels]):
                t.add_row(Text(f"{a}: {x}" if i == 0 else f"  {x}"), str(lv["n"]), _fe(lv["prevalence"]),
                          *(_fe(lv["by_label"].get(c)) for c in classes),
                          fmt_v(e["association"]) if i == 0 else "", style="bold red" if strong and i == 0 else "",
                          end_section=i == min(len(e["levels"]), max_levels) - 1)
        out.append(t)
        if any(e["association"].get("p_method") == "monte carlo" for e in fmt["attributes"].values()):
            out.append(Text(_MC_NOTE, style="dim"))
    out += [Text(line, style="dim") for line in format_text(fmt, max_levels)]
    return out


def render_scan(result: ScanResult | dict, console=None) -> None:
    """Print the scan's rich tables (prevalence, associations, by-column prevalence, leakage, model) to console."""
    from rich.console import Console
    s = result.summary if isinstance(result, ScanResult) else result
    out = str(result.out_dir) if isinstance(result, ScanResult) else None
    (console or Console()).print(scan_renderable(s, out))


def device_renderables(s: dict, classes: list[str]) -> list:
    """The scan's device tables for the terminal: the by-label table (`format_renderables`), the
    named fields, and with a model the with-vs-without table by device."""
    from rich.table import Table
    from rich.text import Text

    dev = s.get("device")
    if not dev:
        return []
    out = format_renderables(dev, classes, max_levels=6, title=DEVICE_TITLE, first_col="device field")
    out += [Text(line, style="bold red" if dev["named"] else "green") for line in device_text(dev)]
    mo = (s.get("model") or {}).get("by_device")
    if mo:
        pos = s["model"]["positive"]
        t = Table(title="Model by device: this device vs the others", title_justify="left", pad_edge=False)
        cols = ["device", "stratum", "n", "accuracy"] + (["sensitivity", "specificity"] if pos else [])
        for c in cols:
            t.add_column(c, justify="left" if c in ("device", "stratum") else "right", no_wrap=True)
        for a, e in mo.items():
            for st in ("with", "without"):
                x = e[st]
                extra = [_fe(x["sensitivity"]), _fe(x["specificity"])] if pos else []
                t.add_row(a if st == "with" else "", "this" if st == "with" else "others", str(x["n"]),
                          _fe(x["accuracy"]), *extra)
        out.append(t)
    return out
