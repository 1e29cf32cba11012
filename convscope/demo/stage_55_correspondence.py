"""Demo stage: correspondence (the paper's Table 1) on aligned faces.

With `--data DIR` holding a `landmarks.json` (the dog faces of ../shared/data), those images;
otherwise the 100 aligned human faces of `skimage.data.lfw_subset()`, upscaled from 25x25,
with the eyes and nose measured on their mean face.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from convscope.analyses.correspondence import (
    FIXED,
    RANDOM,
    load_landmarks,
    plot_deltas,
    run_correspondence,
)
from convscope.data.images import list_images
from convscope.demo import DemoContext, Figure, Section, Table
from convscope.render.images import save_png, side_by_side

TITLE = "Correspondence: is a part treated the same way across images? (Table 1)"
UPSCALE = 8  # lfw faces are 25x25; 200x200 files


def mean_face_landmarks(faces: np.ndarray) -> dict[str, tuple[int, int]]:
    """(x, y) in the 25x25 grid of the darkest 3x3 windows of the mean face: one eye in each
    upper quarter, and the nose's shadow (nostrils) between the eyes and the mouth."""
    mean = faces.mean(0)
    h, w = mean.shape
    box = sum(mean[dy : h - 2 + dy, dx : w - 2 + dx] for dy in range(3) for dx in range(3))

    def darkest(y0: int, y1: int, x0: int, x1: int) -> tuple[int, int]:
        sub = box[y0 - 1 : y1 - 1, x0 - 1 : x1 - 1]  # box[i, j] is centred on (i + 1, j + 1)
        i, j = np.unravel_index(np.argmin(sub), sub.shape)
        return int(x0 + j), int(y0 + i)

    # Rows and columns as fractions of the face, away from the dark background at the sides.
    mid = w // 2
    return {
        "eye_image_left": darkest(h // 5, h // 2, w // 4, mid - 1),
        "eye_image_right": darkest(h // 5, h // 2, mid + 2, w - w // 4),
        "nose": darkest(h // 2, 2 * h // 3, mid - 3, mid + 4),
    }


def lfw_faces(folder: Path, n: int) -> tuple[list[Path], Path, str]:
    import skimage.data

    faces = np.asarray(skimage.data.lfw_subset()[:100], dtype=np.float64)  # aligned faces
    marks = mean_face_landmarks(faces)
    size = faces.shape[1] * UPSCALE
    paths = []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        grey = Image.fromarray((faces[i] * 255).round().astype(np.uint8))
        path = folder / f"face{i:03d}.png"
        grey.resize((size, size), Image.Resampling.BICUBIC).convert("RGB").save(path)
        paths.append(path)
    landmarks = {
        "image_size": [size, size],
        "landmarks": {k: [(x + 0.5) * UPSCALE, (y + 0.5) * UPSCALE] for k, (x, y) in marks.items()},
        "how": "darkest 3x3 windows of the mean of the 100 aligned lfw_subset faces, x8",
    }
    path = folder / "landmarks.json"
    path.write_text(json.dumps(landmarks, indent=1))
    where = ", ".join(f"{k} ({x}, {y})" for k, (x, y) in marks.items())
    return paths, path, f"{n} aligned faces of skimage's lfw_subset (on the 25x25 mean: {where})"


def run(ctx: DemoContext) -> Section:
    out = ctx.stage_dir("correspondence")
    section = Section(TITLE)
    n = 10 if ctx.quick else 30
    if ctx.data is not None and (ctx.data / "landmarks.json").is_file():
        lm_path = ctx.data / "landmarks.json"
        all_images = list_images(ctx.data)
        pick = np.sort(np.random.default_rng(0).choice(len(all_images), n, replace=False))
        images = [all_images[i] for i in pick]
        patch, what, root = 40, f"{n} images of {ctx.data}", ctx.data
    else:
        if ctx.data is not None:
            section.summary.append(f"{ctx.data} has no landmarks.json: using lfw faces instead")
        images, lm_path, what = lfw_faces(out / "faces", n)
        patch, root = 4 * UPSCALE, out / "faces"
    landmarks = load_landmarks(lm_path)
    result, pictures = run_correspondence(
        ctx.pretrained(),
        images,
        landmarks,
        landmarks.parts,
        root=root,
        patch=patch,
        draws=2 if ctx.quick else 3,
        fixed_draws=0 if ctx.quick else 2,
        layers=["block15", "head", "pool"],
        rounds=100,
    )
    result.save(out)
    chart = plot_deltas(result, out / "deltas.png")
    examples = save_png(side_by_side(*pictures), out / "occlusions.png")
    section.summary.append(f"{what}; {patch}-px squares of the mean colour")
    for layer in result.layers:
        rand = result.delta(layer, RANDOM)
        parts = ", ".join(f"{p} {result.delta(layer, p):.3f}" for p in result.parts)
        fixed = f", same place {result.delta(layer, FIXED):.3f}" if FIXED in result.corners else ""
        section.summary.append(f"{layer}: Δ {parts} vs random {rand:.3f}{fixed}")
    section.figures += [
        Figure(
            str(chart.relative_to(ctx.out)),
            "Δ per layer (mean normalized Hamming distance between the signs of the feature "
            "changes of two images), each part against random squares; lower: more consistent; "
            "error bars: bootstrap std over the image set",
        ),
        Figure(
            str(examples.relative_to(ctx.out)),
            f"The first image: original, each part occluded ({', '.join(result.parts)}), "
            "one random square",
        ),
    ]
    section.tables.append(Table("Δ per layer and occlusion", "correspondence/deltas.csv"))
    return section
