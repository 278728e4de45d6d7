"""The project's exception hierarchy. The CLI maps every `AuditError` to exit code 2 with its one-line message."""


class AuditError(Exception):
    """Bad input the user can fix. The message is one line naming the file/parameter/column and what was expected.

    param: the library parameter the message names (e.g. "batch_size"), or None. Messages name parameters, never
    command-line flags; the CLI rewrites that name to its flag when it prints (`cli.py` `FLAGS`).
    """

    def __init__(self, *args: object, param: str | None = None) -> None:
        super().__init__(*args)
        self.param = param


class RunDirError(AuditError):
    """The run directory, its config or its checkpoint is missing, unreadable or inconsistent."""


class ManifestError(AuditError):
    """The data manifest is missing, unreadable, lacks a column, or holds a label not among the classes."""


class LayerError(AuditError):
    """The requested target layer does not exist in the model."""


class ConfigError(AuditError, ValueError):
    """A config preset or option does not parse or holds an invalid value (also a ValueError, for library users)."""


class MaskError(AuditError):
    """A region mask could not be produced (the region is then marked missing, never silently zero)."""


class UndefinedMetricWarning(UserWarning):
    """A statistic is undefined (empty group, constant input, all-zero CAM): its value is NaN."""


class MaskWarning(UserWarning):
    """A mask was empty, all-ones, resized with a different aspect ratio, or unreadable."""
