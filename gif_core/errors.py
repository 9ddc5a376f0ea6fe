"""Project exceptions.

Every error a user can cause subclasses :class:`GIFError` (itself a ``ValueError``) and carries a
message that names the argument, what was expected, what came, and how to fix it.
"""

from __future__ import annotations


class GIFError(ValueError):
    """Base class of every user-facing GIF error."""


class InputError(GIFError):
    """A query, corpus or argument is malformed (empty text, bad bytes, wrong type)."""


class CorpusError(GIFError):
    """A corpus cannot be read: unknown format, duplicate ids, too few samples."""


class IndexFormatError(GIFError):
    """An index directory is missing, partly written, or built by an incompatible version."""


class ConfigError(GIFError):
    """A configuration value is out of range or inconsistent with another one."""


class SolverError(GIFError):
    """An inverse-Hessian-vector solver cannot run or did not converge with these settings."""
