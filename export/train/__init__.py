"""Training of the demo model pack (torch, export stage only).

* :mod:`.data`      -- align MEBeauty + OMI faces with beautyrt's own MTCNN + FFHQ aligner, cache as npz;
* :mod:`.generator` -- joint training of the StyleGAN2-architecture generator and its W+ encoder;
* :mod:`.beauty`    -- the beauty regressor on MEBeauty ratings, in the generator's crop domain;
* :mod:`.direction` -- the linear "beauty direction" baseline in W (InterFaceGAN-style).

Nothing here is imported by the runtime. Caches go to ``~/.cache/beautyrt/train`` unless told otherwise.
"""
