"""Spurious-correlation auditor for medical image classifiers: Grad-CAM evidence against target and artifact regions.

The public API (docs/api.md) is re-exported here from `audit.api`, loaded on first use so that `import audit`
(and the CLI) stay light::

    import audit
    result = audit.run_audit("runs/resnet18", "manifest.csv", preset="configs/ham10000.yaml")
    result.summary.verdict ; result.per_image ; result.show("ISIC_0024306")
"""
from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from ._version import __version__

__all__ = ["run_audit", "load_result", "scan", "discover", "render_reports", "compare", "AuditResult", "Summary",
           "Gate", "RegionSummary", "OperatingPoint", "OperatingPoints", "Maps", "AuditConfig", "InputSpec",
           "Estimate", "AuditError", "ConfigError", "RunDirError", "ManifestError", "LayerError", "MaskError",
           "__version__"]

_ERRORS = ("AuditError", "ConfigError", "RunDirError", "ManifestError", "LayerError", "MaskError")

if TYPE_CHECKING:
    from .api import (AuditConfig, AuditResult, Estimate, Gate, InputSpec, Maps, OperatingPoint, OperatingPoints,
                      RegionSummary, Summary, compare, discover, load_result, render_reports, run_audit, scan)
    from .errors import AuditError, ConfigError, LayerError, ManifestError, MaskError, RunDirError


class _AuditModule(types.ModuleType):
    """`audit.scan`, `audit.discover` and `audit.compare` are the API's functions although submodules of the same
    names exist (`from audit.scan import run_scan` still reads the submodule, through sys.modules): the import
    system binds a submodule onto its package when it is first imported, which would replace the function."""

    def _api(name: str):  # type: ignore[misc]
        def get(self):  # noqa: ARG001 (a property's getter)
            from . import api
            return getattr(api, name)

        def put(self, value):  # the import system's binding of the submodule: kept out of the way
            self.__dict__[name] = value
        return property(get, put)

    scan = _api("scan")
    discover = _api("discover")
    compare = _api("compare")
    del _api


sys.modules[__name__].__class__ = _AuditModule


def __getattr__(name: str):
    if name in _ERRORS:
        from . import errors
        return getattr(errors, name)
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'audit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
