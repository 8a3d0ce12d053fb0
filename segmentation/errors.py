"""Errors a user can fix: the CLI prints them as one line, never as a traceback."""


class SegmentationError(Exception):
    """A problem the user can act on (bad input, missing model, refused run)."""


class IngestError(SegmentationError):
    """The incoming file or table cannot be loaded; nothing was written."""


class ValidationFailed(SegmentationError):
    """A batch broke the data contract and must not be scored."""


class ModelError(SegmentationError):
    """No usable model: missing, tampered with, or from another scikit-learn."""


class LegacyModel(ModelError):
    """A model saved as a pickle by an earlier release: never loaded."""


class DriftDetected(SegmentationError):
    """Data or segment mix moved past the major-shift PSI band: the model may be stale."""


class DatabaseUnavailable(SegmentationError):
    """The server refused or dropped the connection (restarting, failing over): retry."""


class BatchBusy(SegmentationError):
    """Another run is validating this batch."""


class RunLocked(SegmentationError):
    """Another scoring run holds the lock."""
