"""Errors a user can cause. The command line prints them as one line and exits non-zero."""


class ScrollsegError(Exception):
    """A problem with the user's input or environment; the message says what to do."""

    exit_code = 2


class DataError(ScrollsegError):
    """A file of the dataset is missing, unreadable or malformed."""


class ConfigError(ScrollsegError):
    """A preset, override or saved config is invalid or inconsistent."""


class CheckpointError(ScrollsegError):
    """A checkpoint is missing, damaged or untrusted."""
