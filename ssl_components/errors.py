"""User-facing errors: the first line says what is wrong and how to fix it."""


class PipelineError(Exception):
    """An error caused by input or settings, not by a bug. Its message is shown as-is, no traceback."""


class ConfigError(PipelineError):
    """params.yaml (or an override) is invalid."""


class DataError(PipelineError):
    """The input data cannot be read or does not pass validation."""


class TrainingError(PipelineError):
    """Training diverged (NaN loss) or collapsed (constant embeddings)."""
