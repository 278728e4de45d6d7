"""The house has one direction (#26 §4): every import between the project's modules points down the layers, and
the code passes its lint (ruff: unused imports and names, undefined names, unused parameters).

Layers, lowest first (a module may import from its own layer and the layers below, never from above; imports
under `if TYPE_CHECKING:` are annotations only and do not count, function-local imports do):

  core      errors, estimates and bootstrap (stats), images (preprocess, dicom pixels), manifests, spill files
  regions   masks/: the region registry, detectors, mask files, export
  engine    Grad-CAM (cam, fold), scores, data loading, the output cache, counterfactual edits, run dirs, models
  analyses  summary, thresholds, gates, association statistics, formats, discover, sanity, compare, the scan's
            hashing and pass, device bias, reading a finished audit (report.inputs)
  app       the config and the preset files (every section is checked against the analyses), the audit pipelines
            (single-label and multi-label), the scan's preparation from files
  render    the terminal, report.html and the gallery, compare's report, the scan's tables
  api       the public Python API (audit/__init__, audit/api), the demo
and cli.py above them all.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("audit.errors", "audit.stats", "audit.summary_types", "audit.summary_schema", "audit.preprocess", "audit.dicom", "audit.manifest", "audit.spill",
              "audit._version")),
    ("regions", ("masks.types", "masks.registry", "masks._util", "masks.geometric", "masks.detect_cxr", "masks.detect_derm",
                 "masks.files", "masks.export", "masks.synth_ink", "masks")),
    ("engine", ("audit.cam", "audit.fold", "audit.scores", "audit.data", "audit.cache", "audit.counterfactual", "audit.common",
                "audit.run", "audit.xrv", "audit.predict", "audit.stream")),
    ("analyses", ("audit.association", "audit.formats", "audit.thresholds", "audit.gates", "audit.summary",
                  "audit.discover", "audit.sanity", "audit.compare", "audit.dicom_bias", "audit.scan.hashing",
                  "audit.scan.config", "audit.scan.core", "audit.report.inputs")),
    ("app", ("audit.config", "audit.pipeline", "audit.multilabel", "audit.scan.prepare")),
    ("render", ("audit.terminal", "audit.report", "audit.report.html", "audit.report.gallery",
                "audit.report.overlay", "audit.report.plots", "audit.report.multilabel", "audit.compare_report",
                "audit.scan.render", "audit.scan")),
    ("api", ("audit", "audit.api", "audit.demo")),
    ("cli", ("cli",)),
]
LEVEL = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}


def project_modules() -> dict[str, Path]:
    out = {"cli": ROOT / "cli.py"}
    for pkg in ("audit", "masks"):
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            skip |= {id(x) for b in n.body for x in ast.walk(b)}
    return skip


def imports(mods: dict[str, Path]) -> dict[str, set[tuple[str, int]]]:
    """module → {(imported project module, line)}, function-local imports included."""
    out: dict[str, set[tuple[str, int]]] = {}
    for m, p in mods.items():
        tree = ast.parse(p.read_text(encoding="utf-8"))
        skip = _type_checking_nodes(tree)
        pkg = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
        found: set[tuple[str, int]] = set()
        for n in ast.walk(tree):
            if id(n) in skip:
                continue
            if isinstance(n, ast.ImportFrom):
                base = (".".join(pkg[:len(pkg) - n.level + 1] + ([n.module] if n.module else []))
                        if n.level else (n.module or ""))
                for a in n.names:
                    t = f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                    if t in mods and t != m:
                        found.add((t, n.lineno))
            elif isinstance(n, ast.Import):
                for a in n.names:
                    if a.name in mods and a.name != m:
                        found.add((a.name, n.lineno))
        out[m] = found
    return out


def test_every_module_has_a_layer():
    missing = sorted(set(project_modules()) - set(LEVEL))
    assert not missing, f"modules without a layer in tests/test_layers.py LAYERS: {missing}"


def test_imports_point_down_the_layers():
    mods = project_modules()
    bad = [f"{mods[m].relative_to(ROOT)}:{line}: {m} ({LAYERS[LEVEL[m]][0]}) imports {t} ({LAYERS[LEVEL[t]][0]})"
           for m, ts in imports(mods).items() for t, line in sorted(ts, key=lambda x: x[1])
           if m in LEVEL and t in LEVEL and LEVEL[t] > LEVEL[m]]
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The checker itself: a function-local relative import of a higher layer is found, a TYPE_CHECKING one is not."""
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "__init__.py").write_text("")
    (tmp_path / "audit" / "stats.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .terminal import x\n"
        "def f():\n    from .terminal import y\n")
    (tmp_path / "audit" / "terminal.py").write_text("")
    mods = {"audit": tmp_path / "audit" / "__init__.py", "audit.stats": tmp_path / "audit" / "stats.py",
            "audit.terminal": tmp_path / "audit" / "terminal.py"}
    assert imports(mods)["audit.stats"] == {("audit.terminal", 5)}


@pytest.mark.skipif(shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
                    reason="ruff not installed (pip install -e '.[dev]')")
def test_ruff_finds_nothing():
    exe = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    r = subprocess.run([exe, "check", "--output-format", "concise", str(ROOT)], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    """No two modules import each other, directly or round a circle (a package's __init__ re-exporting its own
    submodules is not a circle: it is left out, as Python imports it before any of them)."""
    mods = project_modules()
    pkgs = {m for m, p in mods.items() if p.name == "__init__.py"}
    graph = {m: {t for t, _ in ts if t not in pkgs} for m, ts in imports(mods).items() if m not in pkgs}
    assert not _cycles(graph), f"import cycles: {_cycles(graph)}"


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
