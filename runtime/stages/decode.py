"""decode: a path, bytes, PIL image or uint8 array -> :class:`~beautyrt.runtime.types.Photo` (RGB uint8,
EXIF orientation applied; the checks and conversions are ``ops.imageio.load_image``'s)."""

from __future__ import annotations

import os
from typing import Optional

from ..ops.imageio import ImageLike, load_image
from ..types import Photo


def decode(image: ImageLike, name: Optional[str] = None) -> Photo:
    if isinstance(image, Photo):
        return image
    label = name or (str(image) if isinstance(image, (str, os.PathLike)) else "image")
    return Photo(rgb=load_image(image, name=name), name=label)
