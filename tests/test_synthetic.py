"""Synthetic datasets: the sample contract, determinism, disjoint splits, and instructions that denote one object."""

import re

import numpy as np
import pytest

from evtp_cli.data import DATASETS, load_dataset
from evtp_cli.data.synthetic import COLOURS, SHAPES, VOCABULARY, Shape, shape_mask


def _check_sample_contract(sample, task):
    assert isinstance(sample.id, str) and sample.id
    assert sample.task == task
    assert isinstance(sample.text, str) and sample.text
    frames = list(sample.frames)
    assert len(frames) >= 1
    h, w, c = frames[0].shape
    assert c == 3 and all(f.dtype == np.uint8 and f.shape == (h, w, 3) for f in frames)
    assert sample.masks.dtype == bool and sample.masks.shape == (len(frames), h, w)
    assert sample.ignore is None or sample.ignore.shape == sample.masks.shape
    assert isinstance(sample.meta, dict)
    if task == "video":
        assert sample.meta["video_id"] and sample.meta["exp_id"] is not None
    else:
        assert len(frames) == 1


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if n.startswith("synthetic")])
def test_contract_and_determinism(name):
    ds = load_dataset(name, n=12)
    again = load_dataset(name, n=12, cache=False)
    assert len(ds) == 12
    ids = set()
    for a, b in zip(ds, again):
        _check_sample_contract(a, ds.task)
        assert a.id == b.id and a.text == b.text
        assert np.array_equal(np.stack(a.frames), np.stack(b.frames))
        assert np.array_equal(a.masks, b.masks)
        assert a.masks.any(axis=(1, 2)).all()
        ids.add(a.id)
    assert len(ids) == 12


@pytest.mark.parametrize("name", ["synthetic-image", "synthetic-video"])
def test_splits_and_seeds_do_not_overlap(name):
    seen = {}
    for split in ("train", "val", "test"):
        for s in load_dataset(name, n=20, split=split):
            key = np.stack(s.frames)[0].tobytes()
            assert key not in seen, f"{split} repeats a {seen.get(key)} scene"
            seen[key] = split
    a = load_dataset(name, n=5, seed=1)[0]
    b = load_dataset(name, n=5, seed=2)[0]
    assert not np.array_equal(a.frames[0], b.frames[0])


def _objects_matching(objects, colour=None, shape=None):
    return [i for i, o in enumerate(objects) if (colour is None or o["colour"] == colour) and (shape is None or o["shape"] == shape)]


def test_instructions_denote_the_target_independently_checked():
    """Re-derive the referent of plain, superlative and motion phrases from the scene metadata."""
    colour_re = "|".join(COLOURS)
    shape_re = "|".join(SHAPES)
    checked = 0
    for name in ("synthetic-image", "synthetic-video"):
        for s in load_dataset(name, n=150, split="val"):
            objs, target = s.meta["objects"], s.meta["target"]
            m = re.fullmatch(rf"the (?:({colour_re}) )?({shape_re}|object)", s.text)
            if m:
                colour, shape = m.group(1), None if m.group(2) == "object" else m.group(2)
                assert _objects_matching(objs, colour, shape) == [target], s.text
                checked += 1
            m = re.fullmatch(rf"the (largest|smallest) (?:({colour_re}) )?({shape_re}|object)", s.text)
            if m:
                members = _objects_matching(objs, m.group(2), None if m.group(3) == "object" else m.group(3))
                size = s.masks.shape[-1]
                areas = {i: int(shape_mask(Shape(**objs[i]), size).sum()) for i in members}
                assert areas[target] == int(s.masks[0].sum())
                best = max(areas, key=areas.get) if m.group(1) == "largest" else min(areas, key=areas.get)
                assert best == target and len(members) > 1, s.text
                checked += 1
            m = re.fullmatch(rf"the (?:({colour_re}) )?({shape_re}|object) moving (up|down|left|right)", s.text)
            if m:
                members = _objects_matching(objs, m.group(1), None if m.group(2) == "object" else m.group(2))
                dy, dx = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}[m.group(3)]
                moving = [i for i in members if (objs[i]["vy"] * dy + objs[i]["vx"] * dx) > 2 * abs(objs[i]["vy"] * dx + objs[i]["vx"] * dy) and objs[i]["vy"] * dy + objs[i]["vx"] * dx > 0]
                assert moving == [target], s.text
                # the mask really moves that way
                ys, xs = np.nonzero(s.masks[0])
                ye, xe = np.nonzero(s.masks[-1])
                assert (ye.mean() - ys.mean()) * dy + (xe.mean() - xs.mean()) * dx > 0
                checked += 1
    assert checked > 60


def test_distractors_share_attributes():
    """Most instructions cannot be answered by colour alone or shape alone."""
    ds = load_dataset("synthetic-image", n=200, split="val")
    ambiguous = 0
    for s in ds:
        objs, t = s.meta["objects"], s.meta["target"]
        by_colour = _objects_matching(objs, colour=objs[t]["colour"])
        by_shape = _objects_matching(objs, shape=objs[t]["shape"])
        ambiguous += len(by_colour) > 1 and len(by_shape) > 1
    assert ambiguous / len(ds) > 0.4


def test_vocabulary_covers_every_instruction():
    vocab = set(VOCABULARY)
    for name in ("synthetic-image", "synthetic-video"):
        for s in load_dataset(name, n=100):
            assert set(s.text.split()) <= vocab, s.text


def test_more_objects_and_other_sizes():
    s = load_dataset("synthetic-image", n=3, objects=6, size=96)[2]
    assert s.frames[0].shape == (96, 96, 3) and len(s.meta["objects"]) <= 6
    v = load_dataset("synthetic-video", n=2, frames=5, size=32)[1]
    assert v.masks.shape == (5, 32, 32)


@pytest.mark.parametrize("bad", ["n=0", "objects=0", "size=30", "split=dev"])
def test_bad_options(bad):
    from evtp_cli.errors import SpecError

    with pytest.raises(SpecError):
        load_dataset(f"synthetic-image:{bad}")
