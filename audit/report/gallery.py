"""Error gallery: overlays of the cases a reviewer should look at first, and `GALLERY.md` describing them.

Groups (each ranked, N per group, default 8):
  * confident_errors: wrong predictions by confidence, highest first;
  * false_negatives: positive-class images predicted as another class, by confidence in that wrong class;
  * off_target_correct: correct predictions flagged off-target (`flag_off_target`), by confidence;
  * random_correct: correct predictions drawn at random (seeded), for comparison.
Ties are broken by image_id so that the gallery is deterministic. Images that cannot be read are skipped (and
listed); the next candidate takes their place.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..cam import map_concentration
from ..errors import UndefinedMetricWarning
from ..summary import most_confident_first
from ..summary_types import AuditSummary
from .inputs import ReportInputs, fnum
from .overlay import overlay_image

LOW_CONF = 0.6  # top-1 probability below this reads "uncertain"


@dataclass(frozen=True)
class GroupSpec:
    key: str
    title: str
    description: str


GROUPS = (
    GroupSpec("confident_errors", "Errors, most confident first",
              "wrong predictions, highest top-1 probability first"),
    GroupSpec("false_negatives", "Missed positives (false negatives)",
              "positive-class images predicted as another class, ranked by confidence in the wrong class"),
    GroupSpec("off_target_correct", "Right for the wrong reasons? Confident correct cases with off-target evidence",
              "correct predictions flagged off-target, highest confidence first"),
    GroupSpec("random_correct", "Random correct cases, for comparison",
              "correct predictions drawn at random (seeded)"),
)


@dataclass
class GalleryItem:
    rank: int
    image_id: str
    path: Path            # the overlay PNG
    truth: str
    pred: str
    confidence: float
    p_pos: float
    top3: list[tuple[str, float]]
    caption: str          # shown in report.html beside the overlay, not drawn into the PNG
    reading: str
    note: str = ""
    peak_share: float = math.nan   # `audit.cam.map_concentration` of the raw map: max cell / Σ cells
    entropy: float = math.nan      # normalised entropy of the raw map, 1 = flat, 0 = one cell
    n_cells: int = 0               # h·w of the map (a flat map's peak share is 1/n_cells)


@dataclass
class GalleryGroup:
    spec: GroupSpec
    n_candidates: int
    items: list[GalleryItem] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    note: str = ""


@dataclass
class Words:
    """Thresholds behind the words of the one-line readings (stated in GALLERY.md and report.html)."""

    high_conf: float = 0.9
    low_conf: float = LOW_CONF
    artifact_lift: float = 3.0

    def confidence_word(self, p: float) -> str:
        if not math.isfinite(p):
            return "confidence n/a"
        if p >= self.high_conf:
            return "confident"
        if p < self.low_conf:
            return "uncertain"
        return "moderately confident"

    def legend(self) -> str:
        return (f'"confident" = top-1 probability ≥ {self.high_conf:.2f}; "uncertain" = < {self.low_conf:.2f}; '
                f'"moderately confident" in between. An artifact region is named when its lift (share of the '
                f'evidence ÷ share of the area) exceeds {self.artifact_lift:g}. "Outside the <target>" = '
                f"share of the Grad-CAM mass outside that target region. \"Read as X without the <artifact>\" "
                f"(with the counterfactual check): the prediction became X when that region was filled in. Ties "
                f"in confidence are ranked by the logit margin.")


def concentration_text(peak_share: float, entropy: float, n_cells: int, head: str = "map: ") -> str:
    """"map: peak cell 31% of the evidence (flat 2%), entropy 0.62": how concentrated the raw map is, which the
    per-image min-max colours hide; "map: all zero" when it has no evidence."""
    if not math.isfinite(peak_share):
        return f"{head}all zero"
    flat = f" (flat {100 / n_cells:.0f}%)" if n_cells else ""
    ent = f", entropy {entropy:.2f}" if math.isfinite(entropy) else ""
    return f"{head}peak cell {100 * peak_share:.0f}% of the evidence{flat}{ent}"


CONCENTRATION_LEGEND = ("Each overlay is min-max scaled on its own, so a near-flat map is painted as red as a "
                        "focused one: \"map: peak cell\" is the largest cell's share of the raw map's evidence (a "
                        "flat map's is 1/(h·w), given as \"flat\") and the entropy is normalised (1 = flat, "
                        "0 = one cell); per_image.csv has both as cam_peak_share and cam_entropy.")


def words_for(inp: ReportInputs) -> Words:
    return Words(high_conf=float(inp.option("high_conf", 0.9)), artifact_lift=float(inp.option("artifact_lift", 3.0)))


def select_candidates(df: pd.DataFrame, positive: str | None, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Every group's ranked candidates (all of them; the gallery takes the first N readable ones)."""
    correct = df["correct"].astype(bool)
    out = {"confident_errors": most_confident_first(df[~correct])}
    if positive is not None:
        missed = (df["label"].astype(str) == positive) & (df["pred"].astype(str) != positive)
        out["false_negatives"] = most_confident_first(df[missed])
    else:
        out["false_negatives"] = df.iloc[:0]
    off = df["flag_off_target"].astype(bool) if "flag_off_target" in df else pd.Series(False, index=df.index)
    out["off_target_correct"] = most_confident_first(df[correct & off])
    pool = df[correct].assign(_id=df["image_id"].astype(str)).sort_values("_id", kind="mergesort").drop(columns="_id")
    order = np.random.default_rng(seed).permutation(len(pool))
    out["random_correct"] = pool.iloc[order]
    return out


N_DISCOVERED = 3  # discovered groups shown in the gallery (the most suspicious first)


def discovered_groups(summary: AuditSummary | None, df: pd.DataFrame,
                      n: int = N_DISCOVERED) -> list[tuple[GroupSpec, pd.DataFrame]]:
    """The `n` most suspicious groups of the summary's `discover` ranking, each with its prototype rows (the images
    nearest the group's centre, in that order); [] when the audit ran no discovery."""
    d = summary.discover if summary is not None else None  # free-form (audit/discover.py): read as a dict
    if not isinstance(d, dict) or not d.get("ranking"):
        return []
    by_id = df.assign(_id=df["image_id"].astype(str)).set_index("_id")
    out = []
    for r in d["ranking"][:n]:
        ids = [str(i) for i in r.get("prototypes") or [] if str(i) in by_id.index]
        flag = f", flagged {r['flag']}" if r.get("flag") else ""
        spec = GroupSpec(f"discover_{r['kind']}_{r['id']}",
                         f"Discovered {r['kind']} {r['id']} (suspicion {r['suspicion']:.2f}, {r['reason']}{flag}): "
                         "prototypes", f"{r.get('text', '')}. Prototypes: the group's images nearest its centre")
        out.append((spec, by_id.loc[ids].reset_index(drop=True) if ids else df.iloc[:0]))
    return out


def top_k(row: dict, classes: list[str], k: int = 3) -> list[tuple[str, float]]:
    ps = [(c, fnum(row.get(f"p_{c}"))) for c in classes]
    ps = [(c, p) for c, p in ps if math.isfinite(p)]
    return sorted(ps, key=lambda cp: (-cp[1], classes.index(cp[0])))[:k]


def outside_frac(row: dict, target: str) -> float:
    v = fnum(row.get(f"frac_outside_{target}"))
    if math.isfinite(v):
        return v
    f = fnum(row.get(f"frac_{target}"))
    return 1.0 - f if math.isfinite(f) else math.nan


def counterfactual_flips(row: dict, kinds: dict[str, str], classes: list[str] | None) -> list[tuple[str, str]]:
    """(artifact, class it was read as once filled in) for each artifact whose removal changed the prediction."""
    out = []
    for r, kind in kinds.items():
        if kind == "artifact" and fnum(row.get(f"cf_flip_{r}")) == 1.0:
            k = fnum(row.get(f"cf_pred_{r}"))
            out.append((r, classes[int(k)] if classes and math.isfinite(k) and 0 <= k < len(classes)
                        else "another class"))
    return out


def reading(row: dict, positive: str | None, kinds: dict[str, str], words: Words,
            classes: list[str] | None = None) -> str:
    """A one-line reading of one case from its numbers, e.g.
    "false-negative melanoma; 78% of the evidence outside the lesion; read as nevus without the ruler; confident".
    "without the <artifact>" comes from the counterfactual check (`cf_flip_<r>` = 1: the prediction changed when
    that region was filled in); `classes` names its `cf_pred_<r>` index."""
    label, pred = str(row.get("label")), str(row.get("pred"))
    if bool(row.get("correct")):
        parts = [f"correct {pred}"]
    elif positive is not None and label == positive:
        parts = [f"false-negative {positive}"]
    elif positive is not None and pred == positive:
        parts = [f"false-positive {positive}"]
    else:
        parts = [f"{label} read as {pred}"]
    for r, kind in kinds.items():
        if kind == "target":
            o = outside_frac(row, r)
            parts.append(f"{100 * o:.0f}% of the evidence outside the {r}" if math.isfinite(o)
                         else f"no {r} mask")
    for r, kind in kinds.items():
        if kind == "artifact":
            lift, frac = fnum(row.get(f"lift_{r}")), fnum(row.get(f"frac_{r}"))
            if math.isfinite(lift) and lift > words.artifact_lift and math.isfinite(frac):
                parts.append(f"{100 * frac:.0f}% on the {r} ({lift:.1f}× its area)")
    parts += [f"read as {other} without the {r}" for r, other in counterfactual_flips(row, kinds, classes)]
    parts.append(words.confidence_word(fnum(row.get("confidence"))))
    return "; ".join(parts)


def caption(row: dict, positive: str | None, kinds: dict[str, str], classes: list[str] | None = None) -> str:
    """"Pred X (p) · True Y · P(pos)=… · in-<target> …% · w/o <artifact>: Z" for an overlay's strip (the last
    for each artifact whose removal changed the prediction)."""
    parts = [f"Pred {row.get('pred')} ({fnum(row.get('confidence')):.2f})", f"True {row.get('label')}"]
    if positive is not None:
        p = fnum(row.get(f"p_{positive}"))
        parts.append(f"P({positive})={p:.2f}" if math.isfinite(p) else f"P({positive})=n/a")
    for r, kind in kinds.items():
        if kind == "target":
            f = fnum(row.get(f"frac_{r}"))
            parts.append(f"in-{r} {100 * f:.0f}%" if math.isfinite(f) else f"in-{r} n/a")
    parts += [f"w/o {r}: {other}" for r, other in counterfactual_flips(row, kinds, classes)]
    return " · ".join(parts)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "image"


def build_gallery(inp: ReportInputs, n_per_group: int = 8, blocky: bool = False, seed: int = 0,
                  progress: Callable[[], None] | None = None) -> list[GalleryGroup]:
    """Write gallery/<group>/<rank>_<image_id>.png for every group; returns the groups (for GALLERY.md, HTML)."""
    if not isinstance(n_per_group, int) or n_per_group < 0:
        raise ValueError(f"n_per_group: expected a non-negative integer, got {n_per_group!r}")
    root = inp.out_dir / "gallery"
    words = words_for(inp)
    cands = select_candidates(inp.per_image, inp.positive, seed)
    specs = list(GROUPS)
    for gs, rows in discovered_groups(inp.summary, inp.per_image):
        specs.append(gs)
        cands[gs.key] = rows
    if root.is_dir():  # stale overlays of an earlier rendering (also of discovered groups that are gone)
        for folder in root.glob("*/"):
            for old in folder.glob("*.png"):
                old.unlink()
    groups: list[GalleryGroup] = []
    for gs in specs:
        folder = root / gs.key
        c = cands[gs.key]
        g = GalleryGroup(gs, n_candidates=len(c))
        if gs.key == "false_negatives" and inp.positive is None:
            g.note = "no positive class configured (run.positive_class / --positive): group skipped"
        for row in c.to_dict("records"):
            if len(g.items) >= n_per_group:
                break
            iid = str(row["image_id"])
            if iid not in inp.cam_index:
                g.skipped.append((iid, "no CAM in cams.npz"))
                continue
            grid, masks, note = inp.load(row)
            if grid is None:
                g.skipped.append((iid, note))
                continue
            cap = caption(row, inp.positive, inp.kinds, inp.classes)
            cam = inp.cams[inp.cam_index[iid]]
            im = overlay_image(grid, cam, masks, inp.kinds, "", blocky=blocky)  # the caption is text in the report
            with warnings.catch_warnings():  # an all-zero map: NaN, and the overlay says "CAM all zero"
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                peak, ent = map_concentration(cam)
            rank = len(g.items) + 1
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{rank:02d}_{_safe(iid)}.png"
            im.save(path, optimize=False, compress_level=6)
            g.items.append(GalleryItem(
                rank=rank, image_id=iid, path=path, truth=str(row["label"]), pred=str(row["pred"]),
                confidence=fnum(row["confidence"]),
                p_pos=fnum(row.get(f"p_{inp.positive}")) if inp.positive else math.nan,
                top3=top_k(row, inp.classes), caption=cap,
                reading=reading(row, inp.positive, inp.kinds, words, inp.classes),
                note=note, peak_share=float(peak[0]), entropy=float(ent[0]), n_cells=int(np.size(cam))))
            if progress:
                progress()
        groups.append(g)
    return groups


def _md(s: str) -> str:
    return str(s).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def gallery_markdown(inp: ReportInputs, groups: list[GalleryGroup], blocky: bool = False) -> str:
    """The text of GALLERY.md (paths relative to the output folder)."""
    words = words_for(inp)
    s = inp.summary
    res = "×".join(str(x) for x in inp.cams.shape[1:])
    targets, artifacts = inp.targets, inp.artifacts
    lines = [f"# Error gallery: {_md(inp.run_name)}", "",
             f"Overlays: Grad-CAM of the {_md(s.cam.target if s is not None else 'pred')} class at `{_md(inp.layer)}` ({res}), "
             + ("nearest-neighbour (raw layer grid)" if blocky else "bilinear upsampling")
             + "; min-max scaled per image for display only; jet colormap (red = most evidence). Outlines: "
             + f"green = target ({', '.join(targets) or 'none'}), magenta = artifact ({', '.join(artifacts) or 'none'}).",
             "",
             f"Positive class: {_md(inp.positive) if inp.positive else 'not configured'}. Words: {words.legend()}",
             "", CONCENTRATION_LEGEND, ""]
    hidden = s.counterfactual.hidden if s is not None and s.counterfactual is not None else []
    for h in hidden:  # the colours do not show these
        lines += [f"**Shortcut the maps do not show: {_md(h.region)}.** {_md(h.text)}. The overlays "
                  "below under-show it; their readings name it where removing it changed the prediction.", ""]
    pos_h = f"P({_md(inp.positive)})" if inp.positive else "P(pos)"
    for g in groups:
        lines += [f"## {g.spec.title}", "",
                  f"{g.spec.description}; showing {len(g.items)} of {g.n_candidates}.", ""]
        if g.note:
            lines += [f"_{_md(g.note)}_", ""]
        if g.items:
            lines += [f"| # | image | truth | top-1 | {pos_h} | top-3 | reading | map |", "|---|---|---|---|---|---|---|---|"]
            for it in g.items:
                rel = it.path.relative_to(inp.out_dir).as_posix()
                top3 = ", ".join(f"{_md(c)} {p:.2f}" for c, p in it.top3)
                pp = f"{it.p_pos:.2f}" if math.isfinite(it.p_pos) else "n/a"
                lines.append(f"| {it.rank} | [{_md(it.image_id)}]({rel}) | {_md(it.truth)} | "
                             f"{_md(it.pred)} ({it.confidence:.2f}) | {pp} | {top3} | {_md(it.reading)} | "
                             f"{_md(concentration_text(it.peak_share, it.entropy, it.n_cells, head=''))} |")
            lines.append("")
        for iid, why in g.skipped:
            lines.append(f"- skipped {_md(iid)}: {_md(why)}")
        if g.skipped:
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
