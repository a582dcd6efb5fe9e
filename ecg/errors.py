"""Errors a user can hit. The CLI prints them as one line; tracebacks only with --debug."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception from a library, said in one line for an ``EcgError``: the first line of its
    message, cut to ``limit`` characters, or its type when it has no message."""
    text = str(exc)
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class EcgError(Exception):
    """A problem the user can act on: the message names the file and what is wrong."""


class ConfigError(EcgError):
    """A pipeline YAML, or an override of it, is not what the code expects."""


class SourceUnreachable(EcgError):
    """The data source (PhysioNet, a mirror) could not be reached at all."""


class VerificationError(EcgError):
    """A file does not match its published hash or its header."""


class LockedError(EcgError):
    """Another process holds the pipeline's lock."""
