"""Numpy/Pillow building blocks the stages are made of. They know nothing of the pipeline or of each other's
callers: ``geometry`` (5-point alignment, affine warps), ``mtcnn`` (the face detector's three-stage cascade
over any engines), ``blend`` (face masks, composing an edit into a photo), ``imageio`` (decoding, encoding,
atomic writes), ``imaging`` (value ranges, resizing, model inputs, the edit transfer)."""
