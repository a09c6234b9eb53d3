"""RetinaMNIST (MedMNIST v2): diabetic-retinopathy grade of 28x28 colour fundus images.

Source: MedMNIST v2 (Yang et al., Sci Data 10:41, 2023; images from the DeepDRiD challenge,
Liu et al., Patterns 3:100512, 2022), CC BY 4.0; the official ``retinamnist.npz``
(MD5 bd4c0672f1bba3e3a89f0e4e876791e4). Provenance and counts in ``files/retina/SOURCE.md``.
"""

from __future__ import annotations

import io
from importlib import resources

import numpy as np

from medsilo.data.types import RawImages

CLASS_NAMES = ("grade-0", "grade-1", "grade-2", "grade-3", "grade-4")
SPLITS = ("train", "val", "test")

DESCRIPTION = """\
RetinaMNIST (MedMNIST v2): 5-grade diabetic-retinopathy severity from colour fundus photos,
1,600 images of 3x28x28 (official train 1,080 + val 120 + test 400, concatenated in that
order; medsilo re-splits per site).
Label: grade-0 no DR 714, grade-1 mild NPDR 186, grade-2 moderate NPDR 326,
grade-3 severe NPDR 282, grade-4 proliferative DR 92 (ordinal).
Sites: none natural; partition with iid, dirichlet, quantity_skew or shards.
Licence: CC BY 4.0. Cite: Yang et al., MedMNIST v2, Scientific Data 10:41 (2023),
doi:10.1038/s41597-022-01721-8; Liu et al., DeepDRiD, Patterns 3(6):100512 (2022)."""


def load() -> RawImages:
    """All 1,600 images as float32 ``(N, 3, 28, 28)`` in [0, 1], labels int64 0-4."""
    path = resources.files("medsilo.data.builtin") / "files" / "retina" / "retinamnist.npz"
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as npz:
        images = np.concatenate([npz[f"{s}_images"] for s in SPLITS])
        labels = np.concatenate([npz[f"{s}_labels"].reshape(-1) for s in SPLITS])
    # (N, H, W, C) uint8 -> (N, C, H, W) float32 in [0, 1]
    pixels = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32) / 255.0
    return RawImages(images=pixels, labels=labels.astype(np.int64), class_names=CLASS_NAMES)
