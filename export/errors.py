"""Errors of the export stage (exit codes 50..59)."""

from __future__ import annotations

from beautyrt.engines.errors import BeautyrtError, MissingDependencyError  # noqa: F401  (re-exported)


class ExportError(BeautyrtError):
    exit_code = 50


class ParityError(ExportError):
    """An exported model disagrees with its torch original beyond tolerance."""

    exit_code = 51


class CheckpointError(ExportError):
    """A checkpoint cannot be read, is of an unknown format, or its weights do not fit the network."""

    exit_code = 52


class UnsafePickleError(CheckpointError):
    """A pickle asked to import or call something outside the allow-list; nothing was executed."""

    exit_code = 53
