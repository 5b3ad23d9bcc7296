"""Errors about the user's images, faces and outputs (exit codes 30..49)."""

from __future__ import annotations

from beautyrt.engines.errors import BeautyrtError, UsageError  # noqa: F401  (re-exported)


class InputImageError(BeautyrtError):
    """The input image cannot be used."""

    exit_code = 30


class ImageNotFoundError(InputImageError):
    exit_code = 31


class ImageDecodeError(InputImageError):
    """Not an image, truncated, or a format/mode beautyrt cannot read."""

    exit_code = 32


class ImageTooLargeError(InputImageError):
    """Above the pixel limit (decompression-bomb guard)."""

    exit_code = 33


class ImageTooSmallError(InputImageError):
    exit_code = 34


class NoFaceError(InputImageError):
    """No face found (or the face index asked for does not exist)."""

    exit_code = 35


class OutputError(BeautyrtError):
    """The output location cannot be written (directory missing, not writable, unknown extension)."""

    exit_code = 40


class Cancelled(BeautyrtError):
    """The caller stopped the work (a cancel check said so: client gone, deadline passed, shutdown)."""

    exit_code = 60


class ClusterError(BeautyrtError):
    """The Ray path failed as a whole: a deployment whose replicas cannot start, a batch worker that died."""

    exit_code = 90
