"""One family of errors for the trainer: the CLI prints their message alone, never a traceback."""


class TrainingError(Exception):
    exit_code = 1


class DataError(TrainingError):
    """The data cannot be trained on; the message names the file, column, rows or class at fault."""

    exit_code = 2


class ConfigError(TrainingError):
    exit_code = 2


class ParityError(TrainingError):
    """An exported ONNX graph disagrees with the fitted object it was exported from: never publish it."""


class ResumeError(TrainingError):
    exit_code = 2
