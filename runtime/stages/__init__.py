"""The runtime as stages, in the order data flows through them (one direction, typed hand-offs from
``runtime.types``; no stage knows of the stages after it):

    decode   ImageLike                     -> Photo
    detect   Models, Photo                 -> [Face]            (largest first)
    align    Photo, Face                   -> AlignedFace       (the generator's frame)
    invert   Models, AlignedFace           -> Inversion         (encoder: W+ and its rendering)
    search   Models, AlignedFace, Inversion, Settings -> SearchOutcome   (a strategy + one scorer call per generation)
    compose  Models, Inversion, SearchOutcome -> Edit;  Photo + [(AlignedFace, Edit)] at a strength -> image
    encode   Result                        -> bytes             (JPEG/PNG/WebP with provenance metadata)

``runtime.beautifier.Beautifier`` is their composition; ``evaluate``, ``audit``, ``bench`` and the HTTP
service call the same functions. Adding a stage: a module here with one public function from the previous
stage's type to a new type in ``runtime.types``, and one line in ``Beautifier.optimize``.
"""

from . import align, compose, decode, detect, encode, invert, search

ORDER = ("decode", "detect", "align", "invert", "search", "compose", "encode")

__all__ = ["ORDER", "decode", "detect", "align", "invert", "search", "compose", "encode"]
