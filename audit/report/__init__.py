"""Reports of an audit: Grad-CAM overlays, an error gallery, plots and a self-contained `report.html`.

Public API::

    render_reports(out_dir, n_per_group=8, blocky=False, seed=0) -> dict[str, Path]
    overlay_image(grid_img, cam_hw, masks, kinds, caption, blocky=False, alpha=0.45) -> PIL.Image.Image
    read_out_dir(out_dir) -> ReportInputs

Reports are a pure function of the audit's files (per_image.csv, cams.npz, summary.json, config.resolved.yaml)
plus the images (and mask files) on disk: nothing is recomputed from the model.
"""
from __future__ import annotations

from pathlib import Path

from .gallery import GROUPS, build_gallery, gallery_markdown, reading
from .html import render_html
from .inputs import ReportInputs, read_out_dir
from .overlay import overlay_image
from .plots import make_plots

__all__ = ["render_reports", "overlay_image", "read_out_dir", "ReportInputs", "build_gallery", "gallery_markdown",
           "make_plots", "render_html", "reading", "GROUPS"]


def render_reports(out_dir: str | Path, n_per_group: int = 8, blocky: bool = False, seed: int = 0) -> dict[str, Path]:
    """Write the reports of one audit output folder, next to its files.

    out_dir: the folder `cli.py audit --out` wrote (per_image.csv, cams.npz, summary.json, config.resolved.yaml).
    n_per_group: overlays per gallery group (≥ 0; default 8).
    blocky: overlays show the raw layer-resolution grid (nearest neighbour) instead of bilinear upsampling.
    seed: seed of the random sample of correct cases.

    Writes out_dir/report.html, out_dir/GALLERY.md, out_dir/gallery/<group>/<rank>_<image_id>.png and
    out_dir/plots/*.png. Missing images are skipped (listed in GALLERY.md and the report); regions without a mask
    are not outlined. Returns {"html": …, "gallery_md": …, "gallery": folder, "plot_<name>": …}.

    Raises audit.errors.RunDirError when a required file is missing or unreadable; ValueError for a bad argument.

    Example::

        paths = render_reports(Path("reports/demo/reports/shortcut"))
        print(paths["html"])
    """
    if not isinstance(n_per_group, int) or isinstance(n_per_group, bool) or n_per_group < 0:
        raise ValueError(f"n_per_group: expected a non-negative integer, got {n_per_group!r}")
    inp = read_out_dir(out_dir)
    out = inp.out_dir
    plots, plot_notes = make_plots(inp)
    groups = build_gallery(inp, n_per_group=n_per_group, blocky=blocky, seed=seed)
    md = out / "GALLERY.md"
    md.write_text(gallery_markdown(inp, groups, blocky=blocky), encoding="utf-8")
    notes = list(inp.notes) + plot_notes
    n_skip = sum(len(g.skipped) for g in groups)
    if n_skip:
        notes.append(f"{n_skip} gallery image(s) skipped (unreadable or without a CAM); see the gallery lists")
    page = out / "report.html"
    page.write_text(render_html(inp, plots, groups, notes, blocky=blocky), encoding="utf-8")
    paths: dict[str, Path] = {"html": page, "gallery_md": md, "gallery": out / "gallery"}
    paths.update({f"plot_{k}": v for k, v in plots.items()})
    return paths
