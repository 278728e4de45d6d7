"""Spurious-correlation auditor for medical image classifiers: Grad-CAM evidence against target and artifact regions."""
__version__ = "0.1.0"
