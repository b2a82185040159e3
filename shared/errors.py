"""One exception family for nasofl.

Every message says what failed, what was found, what was expected and what to do.
Messages that can leave a hospital (anything raised inside a ClientApp) must never contain a
patient identifier: use :func:`shared.pseudonym.pseudonym` instead.
"""

from __future__ import annotations


class NasoflError(Exception):
    """Base class of every error nasofl raises on purpose."""


class ConfigError(NasoflError):
    """A run-config or node-config key has a bad value. The message names the key."""


class DicomError(NasoflError):
    """A DICOM file or series cannot be used. The message names the file (path relative to the site).

    ``code``: the validation-report problem code when a specific one applies ("" = generic).
    """

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class SiteDataError(NasoflError):
    """A site's data folder breaks the data contract (labels.csv, mapping file, missing sequences)."""


class PrivacyBudgetError(NasoflError):
    """The configured differential-privacy budget would be exceeded."""


class ModelMismatchError(NasoflError):
    """Received or loaded weights do not match the model (keys, shapes, non-finite values)."""


class TrainingDivergedError(NasoflError):
    """A site's local training ended with a loss that is not finite: the round sends no weights. The message says
    which loss and what to lower."""


class CheckpointError(NasoflError):
    """A checkpoint file is missing, empty or unreadable, or cannot be written. The message names the file and
    what to do."""


class BundleError(NasoflError):
    """A model bundle cannot be used: a file changed or is missing, or its format or settings do not fit this
    version of nasofl. The message names the file or key and what differs."""


class OutputWriteError(NasoflError):
    """An output file (a model, a bundle's weights) cannot be written, e.g. the disk is full. The message names
    the file, the space left there and what to do."""
