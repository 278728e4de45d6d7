"""Write the README's two screenshots from the demo's shortcut run: docs/img/terminal.png and docs/img/report.png.

    python cli.py demo && python docs/screenshots.py [--demo reports/demo] [--chromium /usr/bin/chromium]

The terminal summary is rendered from the run's summary.json at 100 columns (rich's SVG export), the report is
report.html as headless Chromium draws it; both are cut to the top of the page and reduced to a 64-colour palette
so that they stay small (each well under 200 KB).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.terminal import summary_renderable  # noqa: E402


def shoot(chromium: str, url: str, png: Path, width: int, height: int) -> None:
    """One headless Chromium screenshot of `url` at width × height CSS pixels."""
    with tempfile.TemporaryDirectory() as prof:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={prof}", f"--window-size={width},{height}", f"--screenshot={png}", url],
                       check=True, capture_output=True, timeout=120)


def shrink(png: Path, max_height: int) -> None:
    """Crop away the white margin (Chromium centres an SVG in its window), keep at most max_height rows and
    store as a 64-colour palette PNG."""
    im = Image.open(png).convert("RGB")
    left, top, right, bottom = Image.eval(im, lambda v: 255 - v).getbbox() or (0, 0, im.width, im.height)
    im = im.crop((left, top, right, min(bottom, top + max_height)))
    im.quantize(colors=64).save(png, optimize=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default=str(ROOT / "reports" / "demo"))
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    a = ap.parse_args()
    run = Path(a.demo) / "reports" / "shortcut"
    if not (run / "summary.json").is_file():
        print(f"screenshots: {run / 'summary.json'} not found: run `python cli.py demo` first", file=sys.stderr)
        return 2
    if not a.chromium:
        print("screenshots: no Chromium found (apt-get install chromium, or --chromium PATH)", file=sys.stderr)
        return 2
    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    con = Console(record=True, width=100, file=open("/dev/null", "w"), force_terminal=True, color_system="truecolor")
    shown = os.path.relpath(run, Path.cwd())
    con.print(summary_renderable(json.loads((run / "summary.json").read_text()), shown))
    with tempfile.TemporaryDirectory() as tmp:
        svg = Path(tmp) / "terminal.svg"
        con.save_svg(str(svg), title="python cli.py audit --run-dir reports/demo/run_shortcut ...")
        shoot(a.chromium, svg.as_uri(), out / "terminal.png", 1000, 2400)
    shrink(out / "terminal.png", 1100)
    shoot(a.chromium, (run / "report.html").resolve().as_uri(), out / "report.png", 1100, 1400)
    shrink(out / "report.png", 1000)
    for p in ("terminal.png", "report.png"):
        print(f"{out / p}: {(out / p).stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
