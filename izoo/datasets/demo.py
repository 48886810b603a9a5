"""Embedded demo data in the official layouts (CIFAR-10 python, Cityscapes, NeRF-synthetic scenes), from a seed.

Nothing is downloaded: CIFAR-format images are crops of the sample photographs bundled with scikit-image, street
scenes are drawn procedurally with real Cityscapes label ids, and 3D scenes are ray-cast analytically with numpy.
Every file is written atomically; a per-kind marker written last makes a rerun with the same settings a no-op,
and the same seed gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import logging
import math
import pickle
import shutil
import struct
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from izoo.atomic import atomic_path
from izoo.errors import IzooError

log = logging.getLogger(__name__)

KINDS = ("cifar10", "cityscapes", "scenes")
DEMO_VERSION = 2   # 2: CIFAR-like crops (40-100 % of the short side, anti-aliased), 5:1 train/test
#: folder of each kind under the demo root (the official top-level names)
KIND_DIRS = {"cifar10": "cifar-10-batches-py", "cityscapes": "cityscapes", "scenes": "scenes"}
#: written last when every kind is complete
COMPLETE_MARKER = ".izoo-demo-complete"


# ---- writing helpers ----------------------------------------------------------------------------------------

def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _png_bytes(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    # PIL writes no timestamp chunk, so equal pixels give equal bytes
    Image.fromarray(array, mode=mode).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes pickles the way CIFAR-10's python-2 ``cPickle`` did: bytes as py2 ``str`` opcodes, numpy under
    ``numpy.core.multiarray``, so that ``pickle.load(f, encoding='bytes')`` yields byte keys (as the dataset's
    page documents) and ``encoding='latin1'`` (torchvision's loader) yields str keys, exactly as with the real files.

    The standard pickler writes python-3 bytes as ``_codecs.encode`` calls, which stay bytes under any encoding.
    """

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None)
        qualname = name or getattr(obj, "__qualname__", None) or obj.__name__
        if module in ("numpy._core.multiarray", "numpy.core.multiarray"):
            module = "numpy.core.multiarray"  # the name numpy 1.x and 2.x both import
        if module is None or "." in qualname:
            super().save_global(obj, name)
            return
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("ascii"))
        self.memoize(obj)


def py2_pickle_bytes(obj: Any) -> bytes:
    """``obj`` pickled (protocol 2) as python 2 wrote the official CIFAR-10 batches."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


# ---- CIFAR-10 python format from scikit-image's sample photographs --------------------------------------------

def _tint(gray: np.ndarray, rgb: Sequence[float]) -> np.ndarray:
    """A grey texture coloured with ``rgb`` so grey sample images become colour classes."""
    g = gray.astype(np.float32)[..., None] / 255.0
    return np.clip(g * np.asarray(rgb, np.float32)[None, None] * 255.0 * 1.3, 0, 255).astype(np.uint8)


def _cifar_photos() -> list[tuple[str, Callable[[], np.ndarray]]]:
    """(class name, photo loader) for the ten demo classes; all files ship inside scikit-image."""
    from skimage import data

    return [
        ("astronaut", data.astronaut),
        ("cat", data.chelsea),
        ("coffee", data.coffee),
        ("rocket", data.rocket),
        ("retina", lambda: data.retina()[250:1160, 250:1160]),  # the fundus, without the black border
        ("galaxy", data.hubble_deep_field),
        ("tissue", data.immunohistochemistry),
        ("motorcycle", lambda: data.stereo_motorcycle()[0]),
        ("brick", lambda: _tint(data.brick(), (0.75, 0.35, 0.25))),
        ("grass", lambda: _tint(data.grass(), (0.35, 0.7, 0.25))),
    ]


def _photo_crops(photo: np.ndarray, n: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """``n`` CIFAR-like images of ``photo``: random object-sized square crops (40-100 % of the short side, random
    flips and brightness), downsampled to ``size`` with an anti-aliasing (Lanczos) filter, as CIFAR-10's 32×32
    images were made from larger photos. Such images reach 30 dB after ~50 SIREN steps, like real CIFAR-10."""
    height, width = photo.shape[:2]
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    img = Image.fromarray(photo)
    for k in range(n):
        side = int(min(height, width) * rng.uniform(0.4, 1.0))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        crop = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS,
                                                                     reducing_gap=3.0)
        arr = np.asarray(crop, dtype=np.float32)
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        arr = arr * rng.uniform(0.85, 1.15)
        out[k] = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return out


def cifar_like_images(n: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``n`` CIFAR-like images ``[n, size, size, 3]`` uint8 and their labels, classes round-robin (in memory, for
    benchmarks; ``make_cifar10`` writes the same kind of images in the official layout)."""
    rng = np.random.default_rng([seed, 11])
    per_class = -(-n // 10)
    crops = [_photo_crops(load(), per_class, rng, size) for _, load in _cifar_photos()]
    images = np.stack([crops[k % 10][k // 10] for k in range(n)])
    return images, np.arange(n) % 10


def cifar_test_per_class(n_per_class: int) -> int:
    """Test images per class for ``n_per_class`` training images: CIFAR-10's 5:1 ratio (5000 → 1000), at least 1."""
    return max(1, int(n_per_class) // 5)


def make_cifar10(out_dir: Path, seed: int = 0, n_per_class: int = 30, n_test_per_class: int | None = None) -> Path:
    """A CIFAR-10 python-version folder (``data_batch_1..5``, ``test_batch``, ``batches.meta``) of CIFAR-like photo
    crops: ``n_per_class`` training and ``n_test_per_class`` (default: a fifth of that) test images per class, so
    ``n_per_class=5000`` gives a CIFAR-10-sized set (50,000 / 10,000)."""
    if n_test_per_class is None:
        n_test_per_class = cifar_test_per_class(n_per_class)
    if n_per_class < 5 or n_test_per_class < 1:
        raise IzooError(f"n_per_class must be >= 5 (5 train batches) and n_test_per_class >= 1, got "
                        f"{n_per_class}/{n_test_per_class}", None, "use --n-per-class 5 or more")
    rng = np.random.default_rng([seed, 10])
    classes = _cifar_photos()
    names = [name for name, _ in classes]
    images: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "test": []}
    for label, (_, load) in enumerate(classes):
        crops = _photo_crops(load(), n_per_class + n_test_per_class, rng)
        images["train"].append(crops[:n_per_class])
        images["test"].append(crops[n_per_class:])
        labels["train"] += [label] * n_per_class
        labels["test"] += [label] * n_test_per_class
    folder = out_dir / KIND_DIRS["cifar10"]
    batches: list[tuple[str, str, np.ndarray, np.ndarray]] = []
    for split in ("train", "test"):
        pix = np.concatenate(images[split])
        lab = np.asarray(labels[split], dtype=np.int64)
        order = rng.permutation(len(lab))  # CIFAR batches mix classes
        pix, lab = pix[order], lab[order]
        if split == "train":
            for k, part in enumerate(np.array_split(np.arange(len(lab)), 5)):
                batches.append((f"data_batch_{k + 1}", f"training batch {k + 1} of 5", pix[part], lab[part]))
        else:
            batches.append(("test_batch", "testing batch 1 of 1", pix, lab))
    counter = 0
    for file_name, batch_label, pix, lab in batches:
        # official rows: 1024 red, 1024 green, 1024 blue values, each plane in raster order
        data = np.ascontiguousarray(pix.transpose(0, 3, 1, 2).reshape(len(pix), -1))
        filenames = []
        for label in lab.tolist():
            counter += 1
            filenames.append(f"{names[label]}_s_{counter:06d}.png".encode())
        obj = {b"batch_label": batch_label.encode(), b"labels": [int(v) for v in lab], b"data": data,
               b"filenames": filenames}
        _write_bytes(folder / file_name, py2_pickle_bytes(obj))
    meta = {b"num_cases_per_batch": int(math.ceil(n_per_class * len(names) / 5)),
            b"label_names": [n.encode() for n in names], b"num_vis": 3072}
    _write_bytes(folder / "batches.meta", py2_pickle_bytes(meta))
    _write_bytes(folder / "readme.html", b"<html><body>izoo demo data in the CIFAR-10 python layout: crops of "
                                         b"scikit-image sample photographs.</body></html>\n")
    return folder


# ---- Cityscapes layout: procedural street scenes with real label ids -----------------------------------------

#: Cityscapes label ids used by the generator, with a base colour for the image
_CS_COLOURS = {
    1: (20, 20, 20),  # ego vehicle (void -> ignore)
    7: (128, 64, 128),  # road
    8: (244, 35, 232),  # sidewalk
    11: (90, 90, 95),  # building
    12: (150, 140, 120),  # wall
    13: (190, 153, 153),  # fence
    17: (153, 153, 153),  # pole
    19: (250, 170, 30),  # traffic light
    20: (220, 220, 0),  # traffic sign
    21: (60, 142, 35),  # vegetation
    22: (152, 251, 152),  # terrain
    23: (70, 130, 180),  # sky
    24: (220, 20, 60),  # person
    26: (0, 0, 142),  # car
    28: (0, 60, 100),  # bus
    33: (119, 11, 32),  # bicycle
}


def _street_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: (RGB uint8 [H, W, 3], label ids uint8 [H, W]), drawn back to front."""
    ids = np.zeros((height, width), dtype=np.uint8)
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    horizon = int(height * rng.uniform(0.42, 0.52))
    ids[:horizon] = 23
    # buildings along the horizon, some walls and fences in front of them
    x = 0
    while x < width:
        w = int(rng.integers(width // 10, width // 4))
        top = int(horizon - rng.uniform(0.2, 0.9) * horizon)
        ids[top:horizon, x:x + w] = 11 if rng.random() < 0.85 else 12
        x += w
    for _ in range(int(rng.integers(1, 4))):  # trees
        cx, cy = rng.uniform(0, width), rng.uniform(0.3 * horizon, horizon)
        r = rng.uniform(0.08, 0.18) * height
        ids[((cols - cx) ** 2 + (rows - cy) ** 2) < r * r] = 21
    ids[horizon:] = 22  # terrain at the far sides
    vanish = width * rng.uniform(0.4, 0.6)
    frac = np.clip((rows - horizon) / max(1, height - horizon), 0, 1)
    road_half = 0.05 * width + frac * 0.55 * width
    walk_half = road_half + 0.05 * width + frac * 0.25 * width
    below = rows >= horizon
    ids[below & (np.abs(cols - vanish) < walk_half)] = 8
    ids[below & (np.abs(cols - vanish) < road_half)] = 7
    if rng.random() < 0.5:  # a fence along the horizon where sky shows through
        band = ids[horizon - max(2, height // 16):horizon]
        band[band == 23] = 13
    for _ in range(int(rng.integers(1, 3))):  # poles with a sign or a traffic light
        px = int(rng.integers(0, width - 2))
        top = int(rng.uniform(0.15, 0.4) * height)
        bottom = int(horizon + rng.uniform(0.05, 0.2) * height)
        ids[top:bottom, px:px + 2] = 17
        ids[top:top + max(3, height // 12), max(0, px - 2):px + 4] = 20 if rng.random() < 0.6 else 19
    for _ in range(int(rng.integers(1, 4))):  # vehicles on the road, nearer ones larger
        v = rng.uniform(0.25, 0.95)
        cy = horizon + v * (height - horizon) * 0.8
        half = 0.04 * width + v * 0.12 * width
        cx = vanish + rng.uniform(-0.8, 0.8) * (0.05 * width + v * 0.55 * width)
        tall = half * rng.uniform(0.6, 0.9)
        ids[int(cy - tall):int(cy), max(0, int(cx - half)):int(cx + half)] = 26 if rng.random() < 0.85 else 28
    for _ in range(int(rng.integers(0, 3))):  # pedestrians (and a bicycle) on the sidewalk
        v = rng.uniform(0.2, 0.9)
        cy = horizon + v * (height - horizon) * 0.7
        cx = vanish + rng.choice([-1, 1]) * (0.1 * width + v * 0.7 * width)
        h, w = (0.1 + 0.25 * v) * height, max(2.0, (0.02 + 0.03 * v) * width)
        ids[max(0, int(cy - h)):int(cy), max(0, int(cx - w / 2)):max(1, int(cx + w / 2))] = 24
        if rng.random() < 0.3:
            ids[max(0, int(cy - h / 3)):int(cy), max(0, int(cx + w / 2)):int(cx + 2 * w)] = 33
    ids[int(height * 0.93):] = 1  # the car's own bonnet, as in every Cityscapes frame
    # colours: class base colour, a per-image tint, shading towards the bottom, and fine noise
    palette = np.zeros((256, 3), dtype=np.float32)
    for label_id, colour in _CS_COLOURS.items():
        palette[label_id] = colour
    img = palette[ids] * rng.uniform(0.85, 1.15, size=3)[None, None]
    img *= (0.8 + 0.4 * (1.0 - rows / height))[..., None]
    img += rng.normal(0.0, 6.0, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), ids


def _coarse(ids: np.ndarray, margin: int = 2) -> np.ndarray:
    """Coarse annotation from fine ids: regions shrunk by ``margin`` px, the gaps unlabeled (0) as in gtCoarse."""
    from scipy import ndimage

    size = 2 * margin + 1
    same = ndimage.maximum_filter(ids, size=size) == ndimage.minimum_filter(ids, size=size)
    return np.where(same, ids, 0).astype(np.uint8)


def make_cityscapes(out_dir: Path, seed: int = 0, height: int = 64, width: int = 128,
                    cities: dict[str, dict[str, int]] | None = None) -> Path:
    """A Cityscapes folder (``leftImg8bit``, ``gtFine``, ``gtCoarse``) of procedural street scenes."""
    cities = cities or {"train": {"aachen": 3, "bremen": 3}, "val": {"frankfurt": 3}}
    root = out_dir / KIND_DIRS["cityscapes"]
    rng = np.random.default_rng([seed, 20])
    for split, per_city in cities.items():
        for city, count in per_city.items():
            for seq in range(count):
                stem = f"{city}_{seq:06d}_000019"
                image, ids = _street_scene(rng, height, width)
                _write_bytes(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _png_bytes(image, "RGB"))
                _write_bytes(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", _png_bytes(ids, "L"))
                _write_bytes(root / "gtCoarse" / split / city / f"{stem}_gtCoarse_labelIds.png",
                             _png_bytes(_coarse(ids), "L"))
    _write_bytes(root / "README", b"izoo demo data in the Cityscapes layout: procedural street scenes labelled "
                                  b"with Cityscapes label ids (gtFine; gtCoarse = shrunk regions).\n")
    return root


# ---- NeRF-synthetic scenes ray-cast from primitives -----------------------------------------------------------

def _look_at(position: np.ndarray) -> np.ndarray:
    """Camera-to-world matrix (Blender/NeRF: camera looks down its -z, y up, world z up) aimed at the origin."""
    back = position / np.linalg.norm(position)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, position
    return c2w


def _scene_primitives(class_name: str, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Spheres and boxes of one object of ``class_name``, varied by ``rng``; everything fits in radius ~1.3."""
    def colour() -> np.ndarray:
        return rng.uniform(0.15, 0.95, size=3)

    prims: list[dict[str, Any]] = []
    if class_name == "snowman":
        r1, r2 = rng.uniform(0.5, 0.65), rng.uniform(0.3, 0.42)
        body = colour()
        prims.append({"type": "sphere", "centre": np.array([0, 0, -0.45]), "radius": r1, "colour": body})
        prims.append({"type": "sphere", "centre": np.array([0, 0, -0.45 + r1 + r2 * 0.8]), "radius": r2,
                      "colour": body * 0.9})
        nose_dir = rng.uniform(0, 2 * math.pi)
        head = prims[-1]["centre"]
        prims.append({"type": "sphere", "centre": head + r2 * np.array([math.cos(nose_dir), math.sin(nose_dir), 0.1]),
                      "radius": 0.09, "colour": np.array([0.95, 0.45, 0.1])})
    elif class_name == "tower":
        z = -0.9
        for _ in range(int(rng.integers(2, 4))):
            half = np.array([rng.uniform(0.25, 0.6), rng.uniform(0.25, 0.6), rng.uniform(0.15, 0.3)])
            prims.append({"type": "box", "centre": np.array([0, 0, z + half[2]]), "half": half,
                          "angle": rng.uniform(0, math.pi / 2), "colour": colour()})
            z += 2 * half[2]
    else:  # "molecule": spheres around a central box
        prims.append({"type": "box", "centre": np.zeros(3), "half": np.full(3, rng.uniform(0.25, 0.35)),
                      "angle": rng.uniform(0, math.pi / 2), "colour": colour()})
        for _ in range(int(rng.integers(3, 6))):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            prims.append({"type": "sphere", "centre": direction * rng.uniform(0.6, 0.85),
                          "radius": rng.uniform(0.18, 0.32), "colour": colour()})
    return prims


def _intersect(prim: dict[str, Any], origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray hit distances ``t`` [R] (inf where missed) and world normals [R, 3] for one primitive."""
    if prim["type"] == "sphere":
        oc = origin - prim["centre"]
        b = dirs @ oc
        c = oc @ oc - prim["radius"] ** 2
        disc = b * b - c
        t = np.where(disc >= 0, -b - np.sqrt(np.maximum(disc, 0)), np.inf)
        t = np.where(t > 0, t, np.inf)
        normal = (origin + t[:, None] * dirs - prim["centre"]) / prim["radius"]
        return t, normal
    # box rotated about z: intersect in its frame with the slab method
    ca, sa = math.cos(prim["angle"]), math.sin(prim["angle"])
    rot = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    o = rot.T @ (origin - prim["centre"])
    d = dirs @ rot  # == (rot.T @ dirs.T).T
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1, t2 = (-prim["half"] - o) * inv, (prim["half"] - o) * inv
    t_near = np.nanmax(np.minimum(t1, t2), axis=1)
    t_far = np.nanmin(np.maximum(t1, t2), axis=1)
    hit = (t_near <= t_far) & (t_near > 0)
    t = np.where(hit, t_near, np.inf)
    axis = np.argmax(np.minimum(t1, t2), axis=1)
    local = np.zeros_like(d)
    rows = np.arange(len(d))
    local[rows, axis] = -np.sign(d[rows, axis])
    return t, local @ rot.T


def _render(prims: list[dict[str, Any]], c2w: np.ndarray, size: int, focal: float, supersample: int = 2) -> np.ndarray:
    """RGBA uint8 [size, size, 4] (straight alpha) of the primitives seen from ``c2w``; rays through pixel centres."""
    n = size * supersample
    f = focal * supersample
    j, i = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5, indexing="ij")
    cam = np.stack([(i - n / 2) / f, -(j - n / 2) / f, -np.ones_like(i)], axis=-1).reshape(-1, 3)
    dirs = cam @ c2w[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    origin = c2w[:3, 3]
    best_t = np.full(len(dirs), np.inf)
    rgb = np.zeros((len(dirs), 3))
    light = np.array([0.4, 0.3, 0.87])
    light /= np.linalg.norm(light)
    for prim in prims:
        t, normal = _intersect(prim, origin, dirs)
        closer = t < best_t
        if not closer.any():
            continue
        best_t[closer] = t[closer]
        point = origin + t[closer, None] * dirs[closer]
        # a surface pattern fixed to the object (so views agree) that shows its orientation
        stripes = 0.85 + 0.15 * np.sign(np.sin(6.0 * point[:, 0]) * np.sin(6.0 * point[:, 1]) + 1e-9)
        shade = 0.35 + 0.65 * np.clip(normal[closer] @ light, 0, 1)
        rgb[closer] = prim["colour"][None] * (shade * stripes)[:, None]
    hit = np.isfinite(best_t)
    alpha = hit.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    colour_sum = (rgb * hit[:, None]).reshape(size, supersample, size, supersample, 3).sum(axis=(1, 3))
    counts = hit.reshape(size, supersample, size, supersample).sum(axis=(1, 3))
    colour = np.where(counts[..., None] > 0, colour_sum / np.maximum(counts[..., None], 1), 0.0)
    rgba = np.concatenate([colour, alpha[..., None]], axis=-1)
    return np.clip(np.rint(rgba * 255), 0, 255).astype(np.uint8)


def make_scenes(out_dir: Path, seed: int = 0, classes: Sequence[str] = ("molecule", "snowman", "tower"),
                scenes_per_class: int = 3, n_train: int = 8, n_test: int = 4, size: int = 64,
                camera_angle_x: float = 0.6911112070083618, radius: float = 4.0) -> Path:
    """NeRF-synthetic scene folders ``scenes/<class>/<class>_NNN/`` with transforms_{train,test}.json and RGBA PNGs."""
    root = out_dir / KIND_DIRS["scenes"]
    rng = np.random.default_rng([seed, 30])
    focal = 0.5 * size / math.tan(0.5 * camera_angle_x)
    for class_name in classes:
        for k in range(scenes_per_class):
            prims = _scene_primitives(class_name, rng)
            scene_dir = root / class_name / f"{class_name}_{k:03d}"
            n_views = n_train + n_test
            azimuths = (np.arange(n_views) * (2 * math.pi / n_views)
                        + rng.uniform(-0.2, 0.2, n_views))[rng.permutation(n_views)]
            elevations = rng.uniform(math.radians(10), math.radians(65), n_views)
            frames: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
            for v in range(n_views):
                split, idx = ("train", v) if v < n_train else ("test", v - n_train)
                position = radius * np.array([math.cos(elevations[v]) * math.cos(azimuths[v]),
                                              math.cos(elevations[v]) * math.sin(azimuths[v]),
                                              math.sin(elevations[v])])
                c2w = _look_at(position)
                rgba = _render(prims, c2w, size, focal)
                _write_bytes(scene_dir / split / f"r_{idx}.png", _png_bytes(rgba, "RGBA"))
                frames[split].append({"file_path": f"./{split}/r_{idx}", "rotation": 0.0,
                                      "transform_matrix": np.round(c2w, 8).tolist()})
            for split in ("train", "test"):
                _write_bytes(scene_dir / f"transforms_{split}.json",
                             _json_bytes({"camera_angle_x": camera_angle_x, "frames": frames[split]}))
    return root


# ---- entry point ------------------------------------------------------------------------------------------------

def _marker(out_dir: Path, kind: str) -> Path:
    return out_dir / f".izoo-demo-{kind}.json"


def make_demo_data(out_dir: str | Path, seed: int = 0, kinds: Sequence[str] = KINDS,
                   n_per_class: int = 30) -> dict[str, Path]:
    """Generate the demo datasets in ``out_dir`` (skipping kinds already complete with these settings)."""
    out_dir = Path(out_dir)
    kinds = list(KINDS) if kinds in ("all", ["all"], ("all",)) else list(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise IzooError(f"unknown demo data kind(s) {unknown} (known: {', '.join(KINDS)})", None,
                        "use --kind all|cifar10|cityscapes|scenes")
    makers: dict[str, Callable[[], Path]] = {
        "cifar10": lambda: make_cifar10(out_dir, seed, n_per_class=n_per_class),
        "cityscapes": lambda: make_cityscapes(out_dir, seed),
        "scenes": lambda: make_scenes(out_dir, seed),
    }
    result: dict[str, Path] = {}
    for kind in kinds:
        settings = {"kind": kind, "seed": int(seed), "version": DEMO_VERSION,
                    "n_per_class": int(n_per_class) if kind == "cifar10" else None}
        marker = _marker(out_dir, kind)
        folder = out_dir / KIND_DIRS[kind]
        if marker.is_file() and folder.is_dir():
            try:
                done = json.loads(marker.read_text())
            except (OSError, json.JSONDecodeError):
                done = None
            if done == settings:
                log.info("demo %s already complete in %s", kind, folder)
                result[kind] = folder
                continue
            # made with other settings: start clean so no file of the old set lingers
            marker.unlink()
            shutil.rmtree(folder)
        started = time.perf_counter()
        result[kind] = makers[kind]()
        _write_bytes(marker, _json_bytes(settings))
        log.info("demo %s written to %s in %.1f s", kind, result[kind], time.perf_counter() - started)
    if all(_marker(out_dir, kind).is_file() for kind in KINDS):
        # one marker for the whole demo set (the workflow's demo_data rule declares it as its output)
        _write_bytes(out_dir / COMPLETE_MARKER, _json_bytes({"seed": int(seed), "version": DEMO_VERSION,
                                                             "kinds": list(KINDS)}))
    return result
