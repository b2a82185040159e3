"""Versioned model bundles: what a finished study hands to a hospital's ``nasofl-site predict``."""

from shared.bundle.loader import ModelBundle, load_bundle, load_state_strict
from shared.bundle.manifest import FORMAT_VERSION
from shared.bundle.writer import ClassifierExport, TrainingSummary, write_bundle

__all__ = [
    "FORMAT_VERSION",
    "ClassifierExport",
    "ModelBundle",
    "TrainingSummary",
    "load_bundle",
    "load_state_strict",
    "write_bundle",
]
