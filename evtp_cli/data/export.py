"""Write synthetic samples in the public layouts (`evtp make-synthetic`), so every real reader can be run
offline and checked against the synthetic data it came from.

Sample k of `synthetic-image` / `synthetic-video` (split "test", the given seed) becomes one image / video
with one expression; every object of the scene is written as an annotation, the target is the one the
expression names. Frames are JPEG (quality `JPEG_QUALITY`): `synthetic-*:jpeg=true` gives the frames a reader
decodes from the exported files, so the two evaluate identically. Masks are written losslessly: COCO RLE, or
polygons that rasterise to exactly the mask's pixels (rectangles covering the mask's row runs), or palette PNGs.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from evtp_cli.data.davis import assign_anno_ids
from evtp_cli.data.files import encode_jpeg
from evtp_cli.data.masks import encode_rle, mask_to_rectangles
from evtp_cli.data.rvos import Expression
from evtp_cli.data.synthetic import (
    SHAPES,
    Scene,
    SyntheticImage,
    SyntheticVideo,
    generate_scene,
)
from evtp_cli.errors import SpecError

SOURCE_SPLIT = "test"


@dataclass(frozen=True)
class ExportResult:
    root: Path
    dataset: str  # reader name
    split: str
    count: int
    source: str  # the synthetic dataset spec the samples came from (with jpeg=true)

    @property
    def spec(self) -> str:
        return f"{self.dataset}:root={self.root},split={self.split}"


@dataclass(frozen=True)
class _Format:
    dataset: str
    video: bool
    default_split: str
    splits: tuple[str, ...]
    write: Callable[["_Writer"], None]


class _Writer:
    """State of one export: the output root, the split and the scenes to write."""

    def __init__(self, root: Path, split: str, scenes: list[Scene], video: bool):
        self.root = root
        self.split = split
        self.scenes = scenes
        self.video = video

    def jpeg(self, path: Path, frame: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_jpeg(frame))

    def json(self, path: Path, data: object) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))

    def pickle(self, path: Path, data: object) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(data))


# ---------------------------------------------------------------------------------------------
# images


def _coco_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons (pixel-corner vertices) whose pycocotools rasterisation is exactly `mask`."""
    polygons = []
    for rect in mask_to_rectangles(mask):
        (x0, y0), (x1, _), (_, y1) = rect[0], rect[1], rect[2]
        polygons.append([float(v) for v in (x0, y0, x1 + 1, y0, x1 + 1, y1 + 1, x0, y1 + 1)])
    return polygons


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _refer_writer(folder: str, refs_file: str, grefs: bool) -> Callable[[_Writer], None]:
    def write(w: _Writer) -> None:
        images, annotations, refs = [], [], []
        image_dir = w.root / "images" / "mscoco" / "images" / "train2014"
        for k, scene in enumerate(w.scenes):
            image_id = k + 1
            file_name = f"COCO_train2014_{image_id:012d}.jpg"
            w.jpeg(image_dir / file_name, scene.frames[0])
            height, width = scene.frames[0].shape[:2]
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            for j, obj in enumerate(scene.objects):
                mask = scene.instance_masks[j, 0]
                # gRefCOCO gets RLE, the refer family polygons: both encodings go through a reader
                segmentation = encode_rle(mask) if grefs else _coco_polygons(mask)
                annotations.append({
                    "id": image_id * 100 + j, "image_id": image_id, "category_id": SHAPES.index(obj.shape) + 1,
                    "segmentation": segmentation, "area": int(mask.sum()), "bbox": _bbox(mask), "iscrowd": 0,
                })
            ann_id = image_id * 100 + scene.target
            category = SHAPES.index(scene.objects[scene.target].shape) + 1
            refs.append({
                "ref_id": k, "ann_id": [ann_id] if grefs else ann_id, "image_id": image_id,
                "category_id": [category] if grefs else category, "split": w.split, "file_name": file_name,
                "sent_ids": [k], "sentences": [{"sent_id": k, "sent": scene.text, "raw": scene.text, "tokens": scene.text.split()}],
            })
        categories = [{"id": i + 1, "name": shape, "supercategory": "shape"} for i, shape in enumerate(SHAPES)]
        w.json(w.root / folder / "instances.json", {"images": images, "annotations": annotations, "categories": categories})
        if grefs:
            w.json(w.root / folder / refs_file, refs)
        else:
            w.pickle(w.root / folder / refs_file, refs)

    return write


def _write_reasonseg(w: _Writer) -> None:
    for k, scene in enumerate(w.scenes):
        name = f"synthetic_{k:05d}"
        w.jpeg(w.root / w.split / f"{name}.jpg", scene.frames[0])
        shapes = [
            {"label": "target", "points": [list(p) for p in rect], "group_id": None, "shape_type": "polygon", "flags": {}}
            for rect in mask_to_rectangles(scene.instance_masks[scene.target, 0])
        ]
        height, width = scene.frames[0].shape[:2]
        w.json(w.root / w.split / f"{name}.json", {
            "text": [scene.text], "is_sentence": False, "shapes": shapes, "imageHeight": height, "imageWidth": width,
        })


# ---------------------------------------------------------------------------------------------
# videos


def _frame_names(scene: Scene, step: int = 1) -> list[str]:
    return [f"{t * step:05d}" for t in range(len(scene.frames))]


def _video_id(k: int) -> str:
    return f"v{k:05d}"


def _write_frames(w: _Writer, folder: Path, scene: Scene, names: list[str]) -> None:
    for name, frame in zip(names, scene.frames):
        w.jpeg(folder / f"{name}.jpg", frame)


def _object_rles(scene: Scene, j: int) -> list[dict | None]:
    return [encode_rle(m) if m.any() else None for m in scene.instance_masks[j]]


def _mask_dict_videos(w: _Writer, frames_root: Path, with_masks: bool, extra: Callable[[int], dict]) -> tuple[dict, dict]:
    """Frames under `frames_root` plus ({"videos": ...}, mask_dict) with every object as an anno_id."""
    videos: dict[str, dict] = {}
    mask_dict: dict[str, list] = {}
    for k, scene in enumerate(w.scenes):
        names = _frame_names(scene)
        _write_frames(w, frames_root / _video_id(k), scene, names)
        first_anno = len(mask_dict)
        for j in range(len(scene.objects)):
            mask_dict[str(first_anno + j)] = _object_rles(scene, j)
        expression = {"exp": scene.text}
        if with_masks:
            expression.update(obj_id=[scene.target], anno_id=[first_anno + scene.target], **extra(k))
        height, width = scene.frames[0].shape[:2]
        videos[_video_id(k)] = {"vid_id": k, "height": height, "width": width, "frames": names, "expressions": {"0": expression}}
    return {"videos": videos}, mask_dict


def _write_mevis(w: _Writer) -> None:
    split_dir = w.root / w.split
    with_masks = w.split != "valid"
    meta, mask_dict = _mask_dict_videos(w, split_dir / "JPEGImages", with_masks, lambda _k: {})
    w.json(split_dir / "meta_expressions.json", meta)
    if with_masks:
        w.json(split_dir / "mask_dict.json", mask_dict)


def _write_revos(w: _Writer) -> None:
    # alternate referring (type_id 0) and reasoning (type_id 1) expressions so both subsets are present
    meta, mask_dict = _mask_dict_videos(w, w.root / "JPEGImages", True, lambda k: {"type_id": k % 2})
    foreground = {
        _video_id(k): {"masks_rle": [encode_rle(m) for m in scene.instance_masks.any(axis=0)]}
        for k, scene in enumerate(w.scenes)
    }
    w.json(w.root / f"meta_expressions_{w.split}_.json", meta)
    w.json(w.root / "mask_dict.json", mask_dict)
    w.json(w.root / "mask_dict_foreground.json", foreground)


def _write_refytvos(w: _Writer) -> None:
    videos, objects = {}, {}
    for k, scene in enumerate(w.scenes):
        names = _frame_names(scene, step=5)  # Ref-YouTube-VOS lists every fifth frame
        _write_frames(w, w.root / w.split / "JPEGImages" / _video_id(k), scene, names)
        expression = {"exp": scene.text}
        if w.split == "train":
            expression["obj_id"] = str(scene.target + 1)
            labels = np.zeros(scene.instance_masks.shape[1:], dtype=np.uint8)  # [T, H, W]; objects do not overlap
            for j in range(len(scene.objects)):
                labels[scene.instance_masks[j]] = j + 1
            folder = w.root / "train" / "Annotations" / _video_id(k)
            folder.mkdir(parents=True, exist_ok=True)
            for name, label in zip(names, labels):
                png = Image.fromarray(label)
                png.putpalette([0, 0, 0] + [c for j in range(1, 256) for c in ((j * 67) % 256, (j * 131) % 256, (j * 29) % 256)])
                png.save(folder / f"{name}.png")
            objects[_video_id(k)] = {"objects": {str(j + 1): {"category": o.shape, "frames": names} for j, o in enumerate(scene.objects)}}
        videos[_video_id(k)] = {"frames": names, "expressions": {"0": expression}}
    w.json(w.root / "meta_expressions" / w.split / "meta_expressions.json", {"videos": videos})
    if objects:
        w.json(w.root / "train" / "meta.json", {"videos": objects})


def _write_davis(w: _Writer) -> None:
    videos, items = {}, []
    for k, scene in enumerate(w.scenes):
        names = _frame_names(scene)
        _write_frames(w, w.root / w.split / "JPEGImages" / _video_id(k), scene, names)
        record = {"exp": scene.text, "obj_id": str(scene.target + 1)}
        videos[_video_id(k)] = {"frames": names, "expressions": {"0": record}}
        items.append((Expression(_video_id(k), "0", scene.text, names, record, {}), scene))
    # the pickle is keyed by the VISA numbering the reader reconstructs
    assign_anno_ids([item for item, _ in items])
    mask_dict = {item.anno_ids[0]: _object_rles(scene, scene.target) for item, scene in items}
    w.json(w.root / "meta_expressions" / w.split / "meta_expressions.json", {"videos": videos})
    w.pickle(w.root / w.split / "mask_dict.pkl", mask_dict)


FORMATS: dict[str, _Format] = {
    "refcoco": _Format("refcoco", False, "val", ("train", "val", "testA", "testB"), _refer_writer("refcoco", "refs(unc).p", False)),
    "refcoco+": _Format("refcoco+", False, "val", ("train", "val", "testA", "testB"), _refer_writer("refcoco+", "refs(unc).p", False)),
    "refcocog": _Format("refcocog", False, "val", ("train", "val", "test"), _refer_writer("refcocog", "refs(umd).p", False)),
    "grefcoco": _Format("grefcoco", False, "val", ("train", "val", "testA", "testB"), _refer_writer("grefcoco", "grefs(unc).json", True)),
    "reasonseg": _Format("reasonseg", False, "val", ("train", "val", "test"), _write_reasonseg),
    "mevis": _Format("mevis", True, "valid_u", ("train", "valid_u", "valid"), _write_mevis),
    "refytvos": _Format("refytvos", True, "train", ("train", "valid"), _write_refytvos),
    "davis17": _Format("davis17", True, "valid", ("train", "valid"), _write_davis),
    "revos": _Format("revos", True, "valid", ("train", "valid"), _write_revos),
}


def export_synthetic(
    fmt: str,
    out: str | Path,
    n: int = 20,
    seed: int = 0,
    split: str | None = None,
    size: int | None = None,
    frames: int | None = None,
) -> ExportResult:
    """Write `n` synthetic samples into `out` in the public layout `fmt`; returns how to load them."""
    if fmt not in FORMATS:
        raise SpecError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    split = split or spec.default_split
    if split not in spec.splits:
        raise SpecError(f"format {fmt!r} has no split {split!r}; choose one of: {', '.join(spec.splits)}")
    options: dict[str, object] = {"seed": seed, "n": n, "split": SOURCE_SPLIT, "cache": False}
    if size is not None:
        options["size"] = size
    if frames is not None:
        if not spec.video:
            raise SpecError(f"format {fmt!r} holds images; 'frames' only applies to video formats")
        options["frames"] = frames
    source_cls = SyntheticVideo if spec.video else SyntheticImage
    try:
        source = source_cls(source_cls.Config(**options))  # type: ignore[arg-type]
    except ValueError as exc:
        raise SpecError(f"make-synthetic: {exc}") from None
    scenes = [generate_scene(source.rng(i), source.scene_config()) for i in range(n)]
    root = Path(out).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError(f"cannot write to {str(root)!r} ({exc.strerror}); choose another --out") from None
    spec.write(_Writer(root, split, scenes, spec.video))
    source_spec = ",".join(f"{k}={v}" for k, v in options.items() if k != "cache")
    return ExportResult(root, spec.dataset, split, n, f"{source.name}:{source_spec},jpeg=true")
