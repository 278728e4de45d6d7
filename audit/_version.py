"""The package version (one place; `audit.__version__` re-exports it)."""
__version__ = "0.1.0"


def package_versions() -> dict:
    """The versions of the packages that decide an audit's numbers (written into config.resolved.yaml, scan.json)."""
    import importlib.metadata as md
    out = {}
    for p in ("torch", "torchvision", "timm", "numpy", "scikit-image", "scikit-learn", "pandas", "rich"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out
