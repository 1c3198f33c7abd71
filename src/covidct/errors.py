"""One exception type for problems a user can fix; the CLI prints its message without a traceback."""


class CovidCTError(Exception):
    """A user-facing error: the message names the file or field and says what to do."""


class DataError(CovidCTError):
    """Missing, malformed or unreadable data."""


class ModelError(CovidCTError):
    """Unknown model name, unavailable or mismatched weights, missing checkpoint."""


class ConfigError(CovidCTError):
    """A configuration value out of range or of the wrong kind."""


class TrainingInterrupted(CovidCTError):
    """Ctrl-C or SIGTERM stopped training; the last finished epoch's checkpoint is kept for --resume."""
