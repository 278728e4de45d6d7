"""compare.html: self-contained, escaped, and rendered by headless Chromium without console errors (skips without
Chromium, as tests/test_report_html.py does)."""
from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image
import pytest

from audit.compare import compare_audits
from audit.compare_report import write_compare
from compare_fixtures import audit_table, set_logodds, write_audit
from test_report_html import _console_problems, _run


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    t = audit_table(30, 30, seed=0)
    a = write_audit(root / "a", t, "base<line>")
    b = write_audit(root / "b", set_logodds(t, range(5), -3.0), "cand")
    c = compare_audits(a, b, gates={"max_sensitivity_drop": 0.02})
    return write_compare(c, root / "out", gallery_n=3)["html"]


def test_page_is_self_contained_escaped_and_holds_the_sections(page):
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html.lower() and "<link" not in html.lower()
    assert "base&lt;line&gt;" in html and "base<line>" not in html
    srcs = re.findall(r'<img src="([^"]*)"', html)
    assert len(srcs) == 3                                  # 3 of the 5 "candidate wrong" images (gallery_n=3)
    for s in srcs:
        im = Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1])))
        assert im.format == "PNG" and im.width > 2 * im.height * 0.8   # two overlays side by side
    for h in ("Non-inferiority gates", "Paired figures", "Per-image changes", "Disagreement gallery"):
        assert f"<h2>{h}</h2>" in html, h
    assert html.count('class="fail">fail<') == 3          # the three sensitivity gates
    assert 'class="verdict fail">Verdict: FAIL<' in html


def test_chromium_renders_compare_html_without_console_errors(page, tmp_path):
    r = _run(["--dump-dom", page.as_uri()], tmp_path, "dom")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("<table") == 3 and r.stdout.count("<img") == 3
    assert "sensitivity @0.80" in r.stdout and "max_sensitivity_drop[top-1]" in r.stdout
    assert _console_problems(r.stderr) == []
    shot = tmp_path / "shot.png"
    r = _run([f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()], tmp_path, "shot")
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    a = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert a.std() > 20 and (a.sum(2) < 150).mean() > 0.002, "blank or textless screenshot"
    fail_red = (abs(a[..., 0] - 255) < 3) & (abs(a[..., 1] - 214) < 3) & (abs(a[..., 2] - 214) < 3)
    assert fail_red.sum() > 200, "the FAIL verdict (#ffd6d6) is not visible"
