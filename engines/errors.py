"""The one error hierarchy of beautyrt.

Every failure a user can cause (bad photo, bad bundle, missing extra, ...) is raised as a subclass of
:class:`BeautyrtError`. Each class carries a distinct ``exit_code`` that the CLI returns, and its message is
one line that names the problem and, where there is one, the fix. Anything else escaping the library is a
bug in beautyrt.

This module knows nothing of faces: image- and face-specific errors live in ``beautyrt.runtime.errors``,
export-side ones in ``beautyrt.export.errors``; all derive from the classes here.
"""

from __future__ import annotations


class BeautyrtError(Exception):
    """Base class; ``exit_code`` is what ``beautyrt`` exits with when this error reaches the CLI."""

    exit_code = 1


class UsageError(BeautyrtError):
    """An argument or setting that cannot be honoured (out of range, unknown name, ...)."""

    exit_code = 2


# --- bundles (10..19) -------------------------------------------------------------------------------
class BundleError(BeautyrtError):
    exit_code = 10


class BundleNotFoundError(BundleError):
    """No bundle directory / manifest, or a file the manifest names is missing."""

    exit_code = 11


class BundleIntegrityError(BundleError):
    """A file's sha256 differs from the manifest, or a model file cannot be parsed."""

    exit_code = 12


class BundleVersionError(BundleError):
    """Bundle written by a newer beautyrt, or engine built for another TensorRT / GPU."""

    exit_code = 13


class BundleSchemaError(BundleError):
    """Manifest is not valid JSON or lacks / contradicts required fields."""

    exit_code = 14


# --- engines (20..29) -------------------------------------------------------------------------------
class ProviderError(BeautyrtError):
    """An execution provider / backend that was asked for cannot be used on this machine."""

    exit_code = 20


class EngineInputError(BeautyrtError):
    """A tensor handed to an engine has the wrong name, dtype or a shape outside its profile."""

    exit_code = 21


class EngineRuntimeError(BeautyrtError):
    """The backend failed while running a model."""

    exit_code = 22


class MissingDependencyError(BeautyrtError):
    """An optional extra (``beautyrt[export]``, ``beautyrt[trt]``) is needed but not installed."""

    exit_code = 23
