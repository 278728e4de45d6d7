"""report.html: self-contained, escaped, and rendered by a real browser (headless Chromium) without console errors.

The browser tests skip when no Chromium is installed (`apt-get install chromium`).
"""
from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from audit.report import render_reports
from test_report_fixtures import build_out_dir

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0"]


def _chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    for c in ((env,) if env else ()) + CANDIDATES:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(args: list[str], tmp: Path, tag: str) -> subprocess.CompletedProcess:
    exe = _chromium()
    if exe is None:
        pytest.skip("headless Chromium not found (looked for /usr/bin/chromium, chromium-browser, google-chrome; "
                    "set CHROMIUM=path or apt-get install chromium)")
    profile = tmp / f"profile_{tag}"
    profile.mkdir()
    try:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                              timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within 90 s ({tag})")


def _console_problems(stderr: str) -> list[str]:
    """Console messages (the page has no script, so any is a problem), uncaught errors, failed loads."""
    return [ln for ln in stderr.splitlines()
            if ":CONSOLE" in ln or "Uncaught" in ln or "Failed to load resource" in ln or "net::ERR_" in ln]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = build_out_dir(tmp_path_factory.mktemp("report"))
    return render_reports(out, n_per_group=4)["html"]


def test_page_is_self_contained_and_escaped(report):
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "&lt;script&gt;" in page and "tiny_&lt;run&gt;" in page     # names from the run are escaped
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert len(srcs) == 5 + 6                                          # 5 plots + 6 gallery overlays (4 groups)
    for s in srcs:
        assert s.startswith("data:image/png;base64,"), s[:60]
        im = Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1])))
        assert im.format == "PNG" and im.width > 100
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:|//|file:)""", page)
    assert 'class="fail">FAIL<' in page and 'class="pass">pass<' in page and 'class="undef">undefined<' in page
    for heading in ("Sign-off gates", "Where the evidence lies", "Operating points for melanoma",
                    "Counterfactual check", "Plots", "Gallery"):
        assert f"<h2>{heading}</h2>" in page, heading


def test_chromium_renders_dom_without_console_errors(report, tmp_path):
    r = _run(["--dump-dom", report.as_uri()], tmp_path, "dom")
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    assert dom.count("<table") >= 5, "expected the accuracy, gates, region, operating-point, counterfactual tables"
    assert dom.count("<img") == 11
    assert "Verdict: FAIL" in dom and "min_median_target_frac" in dom
    assert "false-negative melanoma; 78% of the evidence outside the lesion" in dom
    assert _console_problems(r.stderr) == []


def test_console_check_is_not_vacuous(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><script>throw new Error("planted")</script></body></html>')
    r = _run(["--dump-dom", bad.as_uri()], tmp_path, "bad")
    assert any("planted" in ln for ln in _console_problems(r.stderr)), r.stderr[-2000:]


def test_chromium_screenshot_is_not_blank(report, tmp_path):
    shot = tmp_path / "shot.png"
    r = _run([f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri()], tmp_path, "shot")
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    assert _console_problems(r.stderr) == []
    im = Image.open(shot)
    assert im.format == "PNG" and im.size == (1200, 2000)
    a = np.asarray(im.convert("RGB")).astype(int)
    assert a.std() > 20, "screenshot is (nearly) uniform"
    assert (a.sum(2) < 150).mean() > 0.002, "no dark text pixels"
    fail_red = (abs(a[..., 0] - 255) < 3) & (abs(a[..., 1] - 214) < 3) & (abs(a[..., 2] - 214) < 3)
    assert fail_red.sum() > 200, "the FAIL verdict / gate cell (#ffd6d6) is not visible in the first screen"
