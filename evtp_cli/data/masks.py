"""Mask encodings shared by the readers and the exporter: COCO RLE and polygons (pycocotools), labelme
polygons rasterised the way LISA does for ReasonSeg, unions of instance masks, and per-frame mask lists.

COCO segmentations come in three shapes (pycocotools docs, refer API, gRefCOCO's grefer): a list of
polygons `[[x1, y1, x2, y2, ...], ...]`, one RLE dict `{"size": [h, w], "counts": str | bytes | [int]}`
(compressed string or uncompressed run lengths), or a list of RLE dicts.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils


def _rle_object(rle: dict, height: int | None, width: int | None) -> dict:
    size = rle.get("size")
    counts = rle.get("counts")
    if not isinstance(size, (list, tuple)) or len(size) != 2 or counts is None:
        raise ValueError(f"not a COCO RLE (needs 'size' [h, w] and 'counts'): {str(rle)[:80]}")
    h, w = int(size[0]), int(size[1])
    if height is not None and width is not None and (h, w) != (height, width):
        raise ValueError(f"RLE of size {h}x{w} on an image of size {height}x{width}")
    if isinstance(counts, list):  # uncompressed run lengths
        if sum(counts) != h * w:
            raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, not {h}*{w}")
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [h, w], "counts": counts}


def decode_rle(rle: dict, height: int | None = None, width: int | None = None) -> np.ndarray:
    """bool [H, W] from one COCO RLE (compressed or uncompressed)."""
    return mask_utils.decode(_rle_object(rle, height, width)).astype(bool)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """bool [H, W] for a COCO `segmentation` in any of its three shapes; an empty one is all-False."""
    if isinstance(segmentation, dict):
        return decode_rle(segmentation, height, width)
    if not isinstance(segmentation, (list, tuple)):
        raise ValueError(f"segmentation should be a list or a dict, got {type(segmentation).__name__}")
    if not segmentation:
        return np.zeros((height, width), dtype=bool)
    if all(isinstance(part, dict) for part in segmentation):
        return union((decode_rle(part, height, width) for part in segmentation), (height, width))
    # polygons; like gRefCOCO's loader, skip degenerate ones (fewer than 3 points)
    polygons = [list(map(float, p)) for p in segmentation if isinstance(p, (list, tuple)) and len(p) >= 6 and len(p) % 2 == 0]
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    rles = mask_utils.frPyObjects(polygons, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def encode_rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE with string counts (JSON-serialisable), as MeViS/ReVOS mask_dict files store it."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def union(masks: Iterable[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixel-wise OR of bool masks; all-False for none."""
    out = np.zeros(shape, dtype=bool)
    for m in masks:
        if m.shape != out.shape:
            raise ValueError(f"mask of shape {m.shape} in a union of shape {out.shape}")
        out |= m
    return out


def frame_masks_from_rles(
    per_object: Sequence[Sequence[Any]], num_frames: int, shape: tuple[int, int] | None
) -> np.ndarray:
    """bool [T, H, W]: per frame, the union over objects of their RLE (None/empty = absent in that frame).

    `per_object[k][t]` is object k's RLE at frame t, as in MeViS/ReVOS `mask_dict[anno_id]`. `shape` is used
    when no RLE gives the size (every object absent in every frame).
    """
    for frames in per_object:
        if len(frames) != num_frames:
            raise ValueError(f"an object has masks for {len(frames)} frames, the video has {num_frames}")
    if shape is None:
        sizes = [rle["size"] for frames in per_object for rle in frames if rle]
        if not sizes:
            raise ValueError("no mask gives the frame size")
        shape = (int(sizes[0][0]), int(sizes[0][1]))
    out = np.zeros((num_frames, *shape), dtype=bool)
    for frames in per_object:
        for t, rle in enumerate(frames):
            if rle:
                out[t] |= decode_rle(rle, *shape)
    return out


def rasterize_polygon(points: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """bool [H, W] of a labelme polygon as LISA draws it (cv2.fillPoly plus its 1-px outline on int32 points):
    vertices are truncated to integers and boundary pixels are inside."""
    vertices = [(int(x), int(y)) for x, y in points]
    canvas = Image.new("L", (width, height), 0)
    if vertices:
        ImageDraw.Draw(canvas).polygon(vertices, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def mask_to_rectangles(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Polygons (inclusive, vertex = pixel) whose LISA-style rasterisation is exactly `mask`.

    Each row's runs of foreground pixels are merged with identical runs in the rows below into a rectangle,
    so `rasterize_polygon` of every returned polygon, OR-ed, gives back the mask pixel for pixel.
    """
    mask = np.asarray(mask, dtype=bool)
    open_runs: dict[tuple[int, int], int] = {}  # (x0, x1) -> first row
    rectangles: list[list[tuple[int, int]]] = []

    def close(run: tuple[int, int], y0: int, y1: int) -> None:
        x0, x1 = run
        rectangles.append([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])

    for y in range(mask.shape[0] + 1):
        runs: set[tuple[int, int]] = set()
        if y < mask.shape[0]:
            padded = np.concatenate([[False], mask[y], [False]]).astype(np.int8)
            edges = np.flatnonzero(np.diff(padded))
            runs = {(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])}
        for run in [r for r in open_runs if r not in runs]:
            close(run, open_runs.pop(run), y - 1)
        for run in runs:
            open_runs.setdefault(run, y)
    return rectangles
