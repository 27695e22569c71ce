"""A tiny learnable store for sweep tests: discs (class 1) inside rings (class 2) on noise."""

from __future__ import annotations

import numpy as np

from action_ray.store import CaseMeta, create_store

SPLITS = {"train": 6, "val": 2, "test": 2}


def disc_case(rng: np.random.Generator, shape=(4, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) of one case: a disc of class 1 with a ring of class 2, per slice."""
    z, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    label = np.zeros(shape, np.uint8)
    for k in range(z):
        cy, cx = rng.uniform(10, h - 10), rng.uniform(10, w - 10)
        r = rng.uniform(3, 6)
        d = np.hypot(yy - cy, xx - cx)
        label[k][d < r + 2.5] = 2
        label[k][d < r] = 1
    image = label * np.float32(300) + rng.normal(200, 40, shape).astype(np.float32)
    return image.astype(np.float32), label


def make_tune_store(url: str, seed: int = 0):
    store = create_store(url, name="tune-test", modality="MR", layout="folder",
                         classes={0: "background", 1: "disc", 2: "ring"})
    rng = np.random.default_rng(seed)
    index = 0
    for split, count in SPLITS.items():
        for _ in range(count):
            image, label = disc_case(rng)
            meta = CaseMeta(f"case{index:02d}", f"patient{index:02d}", split, (5.0, 1.5, 1.5),
                            np.eye(4).tolist(), {"image": "synthetic"})
            store.write_case(meta, image, label)
            index += 1
    return store
