"""Synthetic referring segmentation: shapes on noisy/textured backgrounds, deterministic from a seed.

`synthetic-image`: 2..`objects` shapes (circle, square, triangle, cross) in six colours and several sizes.
One instruction singles out one target by colour, shape, size (largest/smallest), absolute position
(leftmost, on the right, ...) or a relation to another object ("the circle left of the blue square").
Distractors are drawn to share the target's colour and/or shape, so an instruction often needs two or
more attributes. `synthetic-video`: the shapes move at constant velocity; instructions also use motion
("the square moving up", "the circle that moves fastest", "the triangle that is not moving").

Every instruction is checked to denote exactly one object. Splits draw from disjoint random streams
(the split is part of the seed sequence), so train, val and test never share a scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from evtp_cli.api import Sample
from evtp_cli.data.base import Dataset

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (45, 175, 70),
    "blue": (50, 90, 235),
    "yellow": (235, 210, 50),
    "purple": (160, 70, 215),
    "white": (238, 238, 238),
}
SHAPES = ("circle", "square", "triangle", "cross")
DIRECTIONS = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
SPLIT_CODES = {"train": 11, "val": 22, "test": 33}
KIND_WEIGHTS = {"attribute": 0.5, "attributes": 1.0, "size": 1.0, "position": 1.2, "relation": 1.5, "motion": 2.5}

# words the generator can emit (the tiny model's vocabulary is built from this list)
VOCABULARY = sorted(
    set(COLOURS)
    | set(SHAPES)
    | set(DIRECTIONS)
    | {
        "the", "object", "largest", "smallest", "leftmost", "rightmost", "topmost", "lowest",
        "on", "left", "right", "top", "bottom", "of", "above", "below", "moving", "that", "moves",
        "fastest", "is", "not",
    }
)


@dataclass
class Shape:
    shape: str
    colour: str
    radius: float
    cy: float
    cx: float
    vy: float = 0.0
    vx: float = 0.0

    def centre(self, t: int = 0) -> tuple[float, float]:
        return self.cy + self.vy * t, self.cx + self.vx * t

    @property
    def area_factor(self) -> float:
        # pixel area of the rendered shape relative to radius² (circle: π, square: (1.7)², ...)
        return {"circle": math.pi, "square": 1.7**2, "triangle": 1.3, "cross": 4 * 2 / 3 - 4 / 9}[self.shape]

    @property
    def area(self) -> float:
        return self.area_factor * self.radius**2

    @property
    def speed(self) -> float:
        return math.hypot(self.vy, self.vx)

    def direction(self) -> str | None:
        if self.speed == 0:
            return None
        if abs(self.vy) >= 2 * abs(self.vx):
            return "up" if self.vy < 0 else "down"
        if abs(self.vx) >= 2 * abs(self.vy):
            return "left" if self.vx < 0 else "right"
        return None


def shape_mask(obj: Shape, size: int, t: int = 0) -> np.ndarray:
    """Binary mask [size, size] of one shape at frame t (pixel centres at integer + 0.5)."""
    cy, cx = obj.centre(t)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx, r = yy - cy, xx - cx, obj.radius
    if obj.shape == "circle":
        return dy * dy + dx * dx <= r * r
    if obj.shape == "square":
        h = 0.85 * r
        return (np.abs(dy) <= h) & (np.abs(dx) <= h)
    if obj.shape == "triangle":
        # upward triangle inscribed in the circle of radius r
        top = -r
        base = 0.5 * r
        half_width = (dy - top) / (base - top) * (0.866 * r)
        return (dy >= top) & (dy <= base) & (np.abs(dx) <= half_width)
    if obj.shape == "cross":
        arm = r / 3.0
        return ((np.abs(dx) <= r) & (np.abs(dy) <= arm)) | ((np.abs(dy) <= r) & (np.abs(dx) <= arm))
    raise ValueError(obj.shape)


@dataclass
class Scene:
    objects: list[Shape]
    frames: list[np.ndarray]  # uint8 [H, W, 3] each
    instance_masks: np.ndarray  # bool [n_objects, T, H, W]
    target: int
    text: str
    kind: str  # which expression form was used


@dataclass
class SceneConfig:
    size: int = 64
    frames: int = 1
    min_objects: int = 2
    max_objects: int = 5


# ---------------------------------------------------------------------------------------------
# rendering


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(35, 110) + rng.uniform(-12, 12, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = rng.integers(4)
    amp = rng.uniform(8, 22)
    if kind == 0:  # smooth gradient
        angle = rng.uniform(0, 2 * math.pi)
        tex = ((math.cos(angle) * xx + math.sin(angle) * yy) / size - 0.5) * 2 * amp
    elif kind == 1:  # stripes
        period = rng.uniform(5, 14)
        angle = rng.uniform(0, math.pi)
        tex = amp * np.sin(2 * math.pi * (math.cos(angle) * xx + math.sin(angle) * yy) / period)
    elif kind == 2:  # checker
        cell = int(rng.integers(4, 10))
        tex = amp * (((yy // cell + xx // cell) % 2) * 2 - 1)
    else:  # blotchy low-frequency noise
        coarse = rng.normal(0, amp, size=(size // 8 + 2, size // 8 + 2))
        tex = np.kron(coarse, np.ones((8, 8)))[:size, :size]
    img = base[None, None, :] + tex[..., None]
    return img.astype(np.float32)


def _render(rng: np.random.Generator, objects: list[Shape], cfg: SceneConfig) -> tuple[list[np.ndarray], np.ndarray]:
    size, n_frames = cfg.size, cfg.frames
    background = _background(rng, size)
    noise_sigma = rng.uniform(3, 10)
    jitter = [rng.uniform(-14, 14, size=3) for _ in objects]
    masks = np.zeros((len(objects), n_frames, size, size), dtype=bool)
    frames = []
    for t in range(n_frames):
        img = background.copy()
        for i, obj in enumerate(objects):
            m = shape_mask(obj, size, t)
            masks[i, t] = m
            img[m] = np.asarray(COLOURS[obj.colour], dtype=np.float32) + jitter[i]
        img += rng.normal(0, noise_sigma, size=img.shape).astype(np.float32)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames, masks


# ---------------------------------------------------------------------------------------------
# scenes


def _draw_attributes(rng: np.random.Generator, target: Shape | None) -> tuple[str, str]:
    shapes, colours = list(SHAPES), list(COLOURS)
    if target is None:
        return str(rng.choice(shapes)), str(rng.choice(colours))
    u = rng.random()
    if u < 0.35:  # same shape, other colour
        return target.shape, str(rng.choice([c for c in colours if c != target.colour]))
    if u < 0.65:  # same colour, other shape
        return str(rng.choice([s for s in shapes if s != target.shape])), target.colour
    if u < 0.8:  # same colour and shape
        return target.shape, target.colour
    return str(rng.choice(shapes)), str(rng.choice(colours))


def _place(rng: np.random.Generator, cfg: SceneConfig, n: int, video: bool) -> list[Shape] | None:
    size, horizon = cfg.size, cfg.frames - 1
    objects: list[Shape] = []
    for _ in range(n):
        shape, colour = _draw_attributes(rng, objects[0] if objects else None)
        for _attempt in range(60):
            radius = rng.uniform(0.075, 0.19) * size
            vy = vx = 0.0
            if video and rng.random() < 0.8:
                direction = str(rng.choice(list(DIRECTIONS)))
                speed = rng.uniform(0.025, 0.06) * size
                dy, dx = DIRECTIONS[direction]
                wobble = rng.uniform(-0.25, 0.25) * speed
                vy, vx = dy * speed + (dx != 0) * wobble, dx * speed + (dy != 0) * wobble
            lo, hi = radius + 1, size - radius - 1
            # the whole trajectory stays inside the frame
            y_lo, y_hi = lo - min(0, vy * horizon), hi - max(0, vy * horizon)
            x_lo, x_hi = lo - min(0, vx * horizon), hi - max(0, vx * horizon)
            if y_lo >= y_hi or x_lo >= x_hi:
                continue
            cand = Shape(shape, colour, radius, rng.uniform(y_lo, y_hi), rng.uniform(x_lo, x_hi), vy, vx)
            if all(_apart(cand, other, cfg.frames) for other in objects):
                objects.append(cand)
                break
        else:
            return None
    return objects


def _apart(a: Shape, b: Shape, n_frames: int) -> bool:
    for t in range(n_frames):
        (ay, ax), (by, bx) = a.centre(t), b.centre(t)
        if math.hypot(ay - by, ax - bx) < a.radius + b.radius + 2.0:
            return False
    return True


def _noun_phrases(objects: list[Shape], target: int) -> list[tuple[str, list[int], int]]:
    """(phrase, members, number of attributes) for every class description containing the target."""
    t = objects[target]
    out = [("object", list(range(len(objects))), 0)]
    out.append((t.shape, [i for i, o in enumerate(objects) if o.shape == t.shape], 1))
    out.append((f"{t.colour} object", [i for i, o in enumerate(objects) if o.colour == t.colour], 1))
    out.append(
        (f"{t.colour} {t.shape}", [i for i, o in enumerate(objects) if o.colour == t.colour and o.shape == t.shape], 2)
    )
    return out


def _unique_name(objects: list[Shape], index: int) -> str | None:
    """The shortest simple phrase naming object `index` alone, for use as a relation's anchor."""
    for phrase, members, _ in sorted(_noun_phrases(objects, index), key=lambda p: p[2]):
        if members == [index] and phrase != "object":
            return phrase
    return None


def _expressions(objects: list[Shape], target: int, size: int, video: bool) -> list[tuple[str, str, float]]:
    """All expressions (text, kind, weight) that denote exactly the target."""
    out: list[tuple[str, str, float]] = []
    t = objects[target]
    margin = 0.08 * size
    for phrase, members, n_attr in _noun_phrases(objects, target):
        others = [objects[i] for i in members if i != target]
        if not others:
            if phrase != "object":
                out.append((f"the {phrase}", "attribute" if n_attr == 1 else "attributes", 0.6 if n_attr == 1 else 1.0))
            continue
        # size superlatives
        if all(t.area >= 1.35 * o.area for o in others):
            out.append((f"the largest {phrase}", "size", 1.0))
        if all(o.area >= 1.35 * t.area for o in others):
            out.append((f"the smallest {phrase}", "size", 1.0))
        if video:
            direction = t.direction()
            if direction and all(o.direction() != direction for o in others):
                out.append((f"the {phrase} moving {direction}", "motion", 2.0))
            if t.speed == 0 and all(o.speed > 0 for o in others):
                out.append((f"the {phrase} that is not moving", "motion", 1.0))
            if t.speed > 0 and all(t.speed >= 1.5 * o.speed for o in others):
                out.append((f"the {phrase} that moves fastest", "motion", 1.0))
            continue
        # absolute position: superlatives and halves
        cy, cx = t.cy, t.cx
        if all(cx < o.cx - margin for o in others):
            out.append((f"the leftmost {phrase}", "position", 1.0))
        if all(cx > o.cx + margin for o in others):
            out.append((f"the rightmost {phrase}", "position", 1.0))
        if all(cy < o.cy - margin for o in others):
            out.append((f"the topmost {phrase}", "position", 1.0))
        if all(cy > o.cy + margin for o in others):
            out.append((f"the lowest {phrase}", "position", 1.0))
        half, m2 = size / 2, margin / 2
        if cx < half - m2 and all(o.cx > half + m2 for o in others):
            out.append((f"the {phrase} on the left", "position", 0.7))
        if cx > half + m2 and all(o.cx < half - m2 for o in others):
            out.append((f"the {phrase} on the right", "position", 0.7))
        if cy < half - m2 and all(o.cy > half + m2 for o in others):
            out.append((f"the {phrase} on the top", "position", 0.7))
        if cy > half + m2 and all(o.cy < half - m2 for o in others):
            out.append((f"the {phrase} on the bottom", "position", 0.7))
        # relations to a uniquely named anchor
        if phrase == "object":
            continue
        relations = {
            "left of": lambda a, b: a.cx < b.cx - margin,
            "right of": lambda a, b: a.cx > b.cx + margin,
            "above": lambda a, b: a.cy < b.cy - margin,
            "below": lambda a, b: a.cy > b.cy + margin,
        }
        for j, anchor in enumerate(objects):
            if j == target or j in members:
                continue
            name = _unique_name(objects, j)
            if name is None:
                continue
            for word, holds in relations.items():
                if holds(t, anchor) and not any(holds(o, anchor) for o in others):
                    out.append((f"the {phrase} {word} the {name}", "relation", 1.5))
    return out


def generate_scene(rng: np.random.Generator, cfg: SceneConfig) -> Scene:
    """One scene with a target and an instruction that denotes exactly it."""
    video = cfg.frames > 1
    for _ in range(100):
        n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        objects = _place(rng, cfg, n, video)
        if objects is None:
            continue
        target = 0  # the first drawn object; distractors were drawn to resemble it
        options = _expressions(objects, target, cfg.size, video)
        if not options:
            continue
        # pick the kind of expression first, so kinds with many phrasings do not dominate
        kinds = sorted({kind for _, kind, _ in options})
        kind_weights = np.array([KIND_WEIGHTS[kind] for kind in kinds])
        kind = kinds[int(rng.choice(len(kinds), p=kind_weights / kind_weights.sum()))]
        of_kind = [o for o in options if o[1] == kind]
        weights = np.array([w for _, _, w in of_kind], dtype=np.float64)
        text, kind, _ = of_kind[int(rng.choice(len(of_kind), p=weights / weights.sum()))]
        # shuffle drawing order so the target is not always painted first
        order = rng.permutation(len(objects))
        objects = [objects[i] for i in order]
        target = int(np.nonzero(order == 0)[0][0])
        frames, masks = _render(rng, objects, cfg)
        if not masks[target].any(axis=(1, 2)).all():
            continue
        return Scene(objects, frames, masks, target, text, kind)
    raise RuntimeError("could not generate a scene; use a larger size or fewer objects")


# ---------------------------------------------------------------------------------------------
# datasets


class _SyntheticBase(Dataset):
    _task_code = 0
    _frames_default = 1

    def __init__(self, config):
        self.config = config
        self.split = config.split
        self._cache: dict[int, Sample] = {}

    def __len__(self) -> int:
        return self.config.n

    def scene_config(self) -> SceneConfig:
        c = self.config
        frames = getattr(c, "frames", 1)
        return SceneConfig(size=c.size, frames=frames, min_objects=min(2, c.objects), max_objects=c.objects)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([SPLIT_CODES[self.config.split], self._task_code, self.config.seed, index])

    def sample_id(self, index: int) -> str:
        return f"{self.name}-{self.config.split}-s{self.config.seed}-{index:05d}"

    def get(self, index: int) -> Sample:
        if index in self._cache:
            return self._cache[index]
        scene = generate_scene(self.rng(index), self.scene_config())
        frames = scene.frames
        if getattr(self.config, "jpeg", False):
            # the frames a reader decodes from `evtp make-synthetic` output, for exact comparisons
            from evtp_cli.data.files import jpeg_roundtrip

            frames = [jpeg_roundtrip(frame) for frame in frames]
        sample = Sample(
            id=self.sample_id(index),
            task=self.task,
            text=scene.text,
            frames=frames,
            masks=scene.instance_masks[scene.target].copy(),
            ignore=None,
            meta={
                "index": index,
                "kind": scene.kind,
                "target": scene.target,
                "objects": [
                    {"shape": o.shape, "colour": o.colour, "radius": round(o.radius, 3), "cy": round(o.cy, 3),
                     "cx": round(o.cx, 3), "vy": round(o.vy, 3), "vx": round(o.vx, 3)}
                    for o in scene.objects
                ],
                "video_id": f"v{index:05d}" if self.task == "video" else None,
                "exp_id": "0" if self.task == "video" else None,
            },
        )
        if self.config.cache:
            self._cache[index] = sample
        return sample


def _check_common(cfg) -> None:
    if cfg.n < 1:
        raise ValueError(f"n must be >= 1, got {cfg.n}")
    if not 1 <= cfg.objects <= 8:
        raise ValueError(f"objects must be in 1..8, got {cfg.objects}")
    if cfg.size < 16 or cfg.size % 4:
        raise ValueError(f"size must be a multiple of 4 and >= 16, got {cfg.size}")


class SyntheticImage(_SyntheticBase):
    """Shapes on textured backgrounds with one referring instruction each."""

    name = "synthetic-image"
    task = "image"
    _task_code = 1

    @dataclass
    class Config:
        seed: int = 0
        n: int = 200
        objects: int = 5
        size: int = 64
        split: Literal["train", "val", "test"] = "test"
        cache: bool = True
        jpeg: bool = False  # frames as decoded from the exporter's JPEG files

        def __post_init__(self) -> None:
            _check_common(self)


class SyntheticVideo(_SyntheticBase):
    """Moving shapes; instructions also refer to motion."""

    name = "synthetic-video"
    task = "video"
    _task_code = 2

    @dataclass
    class Config:
        seed: int = 0
        n: int = 100
        objects: int = 5
        size: int = 48
        frames: int = 8
        split: Literal["train", "val", "test"] = "test"
        cache: bool = True
        jpeg: bool = False  # frames as decoded from the exporter's JPEG files

        def __post_init__(self) -> None:
            _check_common(self)
            if not 2 <= self.frames <= 64:
                raise ValueError(f"frames must be in 2..64, got {self.frames}")
