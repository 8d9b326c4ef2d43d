"""Real dataset readers: round trips through the exporter, hand-written fixtures in the public layouts
(written here with json/pickle/PIL, independently of the exporter), bad input, submissions, ReVOS A/R."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evtp_cli.data import DATASETS, load_dataset
from evtp_cli.data.base import LazyFrames
from evtp_cli.data.export import FORMATS, export_synthetic
from evtp_cli.data.files import strip_row_padding
from evtp_cli.data.masks import (
    decode_segmentation,
    mask_to_rectangles,
    rasterize_polygon,
)
from evtp_cli.data.submission import SubmissionWriter, submission_prefix
from evtp_cli.errors import DataError, SampleError, SpecError
from evtp_cli.metrics.revos import ReVOSAccumulator, revos_accuracy, revos_robustness

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2

REAL_READERS = [name for name in DATASETS.names() if not name.startswith("synthetic")]
VIDEO_READERS = ["mevis", "refytvos", "davis17", "revos"]
REFER_READERS = ["refcoco", "refcoco+", "refcocog", "grefcoco"]

# COCO RLE of a 20x20 mask with rows 3..7 and columns 2..11 set (area 50), as pycocotools encodes it
RECT_RLE = {"size": [20, 20], "counts": "[15?00000000000000000m4"}


def rect_mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def write_jpeg(path: Path, colour=(90, 120, 150), size=(20, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size[1], size[0]), colour).save(path, quality=95)


def check_contract(sample, task: str) -> None:
    frames = list(sample.frames)
    assert isinstance(sample.frames, LazyFrames)
    h, w = frames[0].shape[:2]
    assert all(f.dtype == np.uint8 and f.shape == (h, w, 3) for f in frames)
    assert sample.task == task and isinstance(sample.text, str) and sample.text
    if sample.masks is not None:
        assert sample.masks.dtype == bool and sample.masks.shape == (len(frames), h, w)
    json.dumps(sample.meta)  # meta stays serialisable (it goes into samples.jsonl)
    keys = {"video_id", "exp_id"} if task == "video" else set()
    if sample.meta.get("ref_id") is not None:
        keys = {"ref_id", "ann_id", "image_id"}
    assert keys <= set(sample.meta)


# ---------------------------------------------------------------------------------------------
# round trip: synthetic -> exporter -> reader


def test_every_reader_has_an_export_format():
    assert sorted(REAL_READERS) == sorted(f.dataset for f in FORMATS.values())


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    base = tmp_path_factory.mktemp("exports")
    return {fmt: export_synthetic(fmt, base / fmt.replace("+", "plus"), n=3, seed=5) for fmt in FORMATS}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_round_trip(exports, fmt):
    result = exports[fmt]
    ds = load_dataset(result.spec)
    exact = load_dataset(result.source)  # the same samples with the exporter's JPEG frames
    raw = load_dataset(result.source.replace(",jpeg=true", ""))
    assert len(ds) == len(exact) == 3 and ds.name == result.dataset and ds.split == result.split
    ids = set()
    for i, (a, b, c) in enumerate(zip(ds, exact, raw)):
        check_contract(a, exact.task)
        assert a.id == ds.sample_id(i)
        ids.add(a.id)
        assert a.text == b.text
        assert np.array_equal(a.masks, b.masks) and a.masks.any()
        frames = np.stack(list(a.frames))
        assert np.array_equal(frames, np.stack(list(b.frames)))
        # JPEG is lossy: against the raw synthetic frames only close, not equal
        assert np.abs(frames.astype(int) - np.stack(list(c.frames))).mean() < 5.0
    assert len(ids) == 3


def test_export_splits_without_ground_truth(tmp_path):
    for fmt, split in (("mevis", "valid"), ("refytvos", "valid")):
        result = export_synthetic(fmt, tmp_path / fmt, n=2, split=split, frames=3, size=32)
        ds = load_dataset(result.spec)
        sample = ds[1]
        assert sample.masks is None and not ds.has_ground_truth
        assert len(sample.frames) == 3 and sample.frames[0].shape == (32, 32, 3)


def test_revos_export_subsets_and_foreground(exports):
    ds = load_dataset(exports["revos"].spec)
    assert [s.meta["subset"] for s in ds] == ["referring", "reasoning", "referring"]
    assert len(load_dataset(exports["revos"].spec + ",subset=reasoning")) == 1
    sample = ds[0]
    fg = ds.foreground(sample.meta["video_id"])
    assert fg.shape == sample.masks.shape and (fg | sample.masks).sum() == fg.sum() and fg.sum() > sample.masks.sum()


# ---------------------------------------------------------------------------------------------
# hand-written fixtures: RefCOCO family


def _write_refer(root: Path, folder: str, refs_name: str, refs: list, anns: list, image_dir: str, as_json=False):
    data = root / folder
    data.mkdir(parents=True)
    (data / "instances.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "height": 20, "width": 20}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "thing"}],
    }))
    if as_json:
        (data / refs_name).write_text(json.dumps(refs))
    else:
        (data / refs_name).write_bytes(pickle.dumps(refs, protocol=2))
    write_jpeg(root / image_dir / "COCO_train2014_000000000007.jpg")


def _ref(ref_id, ann_id, split, *sents):
    return {
        "ref_id": ref_id, "ann_id": ann_id, "image_id": 7, "category_id": 1, "split": split,
        "sentences": [{"sent": s, "raw": s.upper(), "sent_id": 10 * ref_id + k} for k, s in enumerate(sents)],
    }


@pytest.mark.parametrize("name,refs_name", [("refcoco", "refs(unc).p"), ("refcoco+", "refs(unc).p"), ("refcocog", "refs(umd).p")])
def test_refer_fixture(tmp_path, name, refs_name):
    anns = [
        {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]]},
        # uncompressed RLE, column-major runs: column 0 has rows 0..3 set -> 4 pixels
        {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 0, "segmentation": {"size": [20, 20], "counts": [0, 4, 396]}},
        {"id": 3, "image_id": 7, "category_id": 1, "iscrowd": 0, "segmentation": [RECT_RLE]},
    ]
    test_a, test_b = ("testA", "testB") if name != "refcocog" else ("test", "test")
    refs = [_ref(1, 1, test_a, "left box", "the box"), _ref(2, 2, test_b, "thin bar"), _ref(3, 3, "val", "rle box")]
    _write_refer(tmp_path, name, refs_name, refs, anns, "images/mscoco/images/train2014")
    val = load_dataset(f"{name}:root={tmp_path}")
    assert len(val) == 1 and val[0].masks.sum() == 50 and np.array_equal(val[0].masks[0], rect_mask(20, 20, 3, 8, 2, 12))
    if name == "refcocog":
        test = load_dataset(f"{name}:root={tmp_path},split=test")
        assert len(test) == 3
        return
    a = load_dataset(f"{name}:root={tmp_path},split=testA")
    assert [s.text for s in a] == ["left box", "the box"]
    s = a[1]
    check_contract(s, "image")
    assert s.meta["ref_id"] == 1 and s.meta["ann_id"] == 1 and s.meta["image_id"] == 7 and s.meta["raw"] == "THE BOX"
    # COCO rasterises the polygon with pixel-corner vertices: rows 3..7, columns 2..11
    assert np.array_equal(s.masks[0], rect_mask(20, 20, 3, 8, 2, 12))
    b = load_dataset(f"{name}:root={tmp_path},split=testB")
    assert len(b) == 1 and np.array_equal(b[0].masks[0], rect_mask(20, 20, 0, 4, 0, 1))
    assert len(load_dataset(f"{name}:root={tmp_path},split=test")) == 3


def test_grefcoco_fixture(tmp_path):
    anns = [
        {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "segmentation": [[0, 0, 4, 0, 4, 2, 0, 2]]},  # 8 px
        {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 0, "segmentation": RECT_RLE},  # 50 px
        {"id": 3, "image_id": 7, "category_id": 1, "iscrowd": 1, "segmentation": {"size": [20, 20], "counts": [0, 400]}},
    ]
    refs = [
        _ref(1, [1, 2, 3], "val", "both boxes"),
        _ref(2, [-1], "val", "the purple elephant"),
        _ref(3, [2], "testA", "big box"),
    ]
    # gRefCOCO's own layout (ReLA): images under ROOT/images/train2014
    _write_refer(tmp_path, "grefcoco", "grefs(unc).json", refs, anns, "images/train2014", as_json=True)
    ds = load_dataset(f"grefcoco:root={tmp_path}")
    assert len(ds) == 2
    multi, empty = ds[0], ds[1]
    check_contract(multi, "image")
    assert multi.masks.sum() == 58 and multi.meta["ann_id"] == [1, 2, 3]  # crowd annotation left out
    assert not empty.masks.any() and empty.meta["no_target"] and empty.masks.shape == (1, 20, 20)
    assert len(load_dataset(f"grefcoco:root={tmp_path},split=testA")) == 1


# ---------------------------------------------------------------------------------------------
# hand-written fixtures: ReasonSeg


def test_reasonseg_fixture(tmp_path):
    split = tmp_path / "val"
    write_jpeg(split / "a.jpg")
    (split / "a.json").write_text(json.dumps({
        "text": ["What holds the soup?", "second query"], "is_sentence": True,
        "shapes": [
            {"label": "target", "points": [[2.7, 3.2], [12.9, 3.0], [12.0, 8.5], [2.0, 8.0]]},  # truncated: 11 x 6 = 66 px
            {"label": "ignore_1", "points": [[4, 4], [6, 4], [6, 6], [4, 6]]},  # 3 x 3 = 9 px, painted over the target
            {"label": "flag", "points": [[0, 0], [19, 0], [19, 19], [0, 19]]},  # skipped
        ],
    }))
    write_jpeg(split / "b.jpg")
    (split / "b.json").write_bytes(json.dumps({
        "text": ["the caf\u00e9 sign"], "is_sentence": False,
        "shapes": [{"label": "target", "points": [[2, 2], [10, 2], [2, 10]]}],  # triangle, 9 + 8 + ... + 1 = 45 px
    }, ensure_ascii=False).encode("cp1252"))  # a few ReasonSeg files are not UTF-8
    ds = load_dataset(f"reasonseg:root={tmp_path}")
    assert [s.id for s in ds] == ["a", "b"]
    a, b = ds[0], ds[1]
    check_contract(a, "image")
    assert a.text == "What holds the soup?" and a.meta["query"] == "long"
    assert a.ignore.sum() == 9 and a.masks.sum() == 66 - 9 and not (a.masks & a.ignore).any()
    assert b.text == "the caf\u00e9 sign" and b.masks.sum() == 45 and b.ignore is None
    assert [s.id for s in load_dataset(f"reasonseg:root={tmp_path},query=short")] == ["b"]
    assert [s.id for s in load_dataset(f"reasonseg:root={tmp_path},query=long")] == ["a"]


# ---------------------------------------------------------------------------------------------
# hand-written fixtures: video sets


def _write_video(folder: Path, names, colours=None) -> None:
    for k, name in enumerate(names):
        write_jpeg(folder / f"{name}.jpg", colour=(colours or [(20 * k, 80, 160)] * len(names))[k])


def _rle_cols(h, w, col, rows):
    """Uncompressed COCO RLE with `rows` pixels set at the top of column `col` (column-major runs)."""
    start = col * h
    return {"size": [h, w], "counts": [start, rows, h * w - start - rows]}


def test_mevis_fixture(tmp_path):
    split = tmp_path / "valid_u"
    _write_video(split / "JPEGImages" / "vid1", ["00000", "00001", "00002"])
    (split / "meta_expressions.json").write_text(json.dumps({"videos": {"vid1": {"frames": ["00000", "00001", "00002"], "expressions": {
        "0": {"exp": "two things moving", "obj_id": [0, 1], "anno_id": [11, 12]},
        "1": {"exp": "a unicorn", "obj_id": [], "anno_id": []},
    }}}}))
    (split / "mask_dict.json").write_text(json.dumps({
        "11": [RECT_RLE, None, RECT_RLE],
        "12": [None, _rle_cols(20, 20, 0, 4), _rle_cols(20, 20, 19, 20)],
    }))
    ds = load_dataset(f"mevis:root={tmp_path}")
    assert [s.id for s in ds] == ["vid1/0", "vid1/1"] and ds.task == "video"
    s = ds[0]
    check_contract(s, "video")
    assert [int(m.sum()) for m in s.masks] == [50, 4, 70]
    assert s.meta == {"video_id": "vid1", "exp_id": "0", "frame_names": ["00000", "00001", "00002"], "anno_id": ["11", "12"]}
    no_target = ds[1]
    assert no_target.masks.shape == (3, 20, 20) and not no_target.masks.any()
    # valid: no mask_dict, no ground truth
    valid = tmp_path / "valid"
    _write_video(valid / "JPEGImages" / "vid2", ["00000"])
    (valid / "meta_expressions.json").write_text(json.dumps({"videos": {"vid2": {"frames": ["00000"], "expressions": {"0": {"exp": "x"}}}}}))
    v = load_dataset(f"mevis:root={tmp_path},split=valid")
    assert v[0].masks is None and v[0].frames[0].shape == (20, 20, 3) and submission_prefix(v) == ""


def _palette_png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.frombytes("P", (labels.shape[1], labels.shape[0]), labels.astype(np.uint8).tobytes())
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.save(path)


def test_refytvos_fixture(tmp_path):
    names = ["00000", "00005"]
    _write_video(tmp_path / "train" / "JPEGImages" / "yt1", names)
    labels = np.zeros((2, 20, 20), dtype=np.uint8)
    labels[0, 3:8, 2:12] = 1
    labels[0, 10:12, 0:5] = 2
    labels[1, 0:2, 0:2] = 2
    for name, lab in zip(names, labels):
        _palette_png(tmp_path / "train" / "Annotations" / "yt1" / f"{name}.png", lab)
    meta = tmp_path / "meta_expressions"
    (meta / "train").mkdir(parents=True)
    (meta / "train" / "meta_expressions.json").write_text(json.dumps({"videos": {"yt1": {"frames": names, "expressions": {
        "0": {"exp": "a red box", "obj_id": "1"}, "1": {"exp": "a green bar", "obj_id": "2"},
    }}}}))
    ds = load_dataset(f"refytvos:root={tmp_path},split=train")
    check_contract(ds[0], "video")
    assert [int(m.sum()) for m in ds[0].masks] == [50, 0]
    assert [int(m.sum()) for m in ds[1].masks] == [10, 4] and ds[1].meta["obj_id"] == "2"
    # valid lists valid + test videos; those of the test expressions file are dropped (ReferFormer)
    _write_video(tmp_path / "valid" / "JPEGImages" / "va", ["00000"])
    (meta / "valid").mkdir()
    (meta / "test").mkdir()
    both = {"va": {"frames": ["00000"], "expressions": {"0": {"exp": "x"}}}, "te": {"frames": ["00000"], "expressions": {"0": {"exp": "y"}}}}
    (meta / "valid" / "meta_expressions.json").write_text(json.dumps({"videos": both}))
    (meta / "test" / "meta_expressions.json").write_text(json.dumps({"videos": {"te": both["te"]}}))
    valid = load_dataset(f"refytvos:root={tmp_path}")
    assert [s.id for s in valid] == ["va/0"] and valid[0].masks is None and submission_prefix(valid) == "Annotations"


def test_davis17_fixture_uses_visa_numbering(tmp_path):
    # videos listed out of order and expression ids that sort as strings ("10" < "2"): anno ids are
    # numbered over sorted videos, then sorted expression ids: a/0 -> 0, a/10 -> 1, a/2 -> 2, b/0 -> 3
    videos = {
        "b": {"frames": ["00000"], "expressions": {"0": {"exp": "b zero"}}},
        "a": {"frames": ["00000"], "expressions": {"2": {"exp": "a two"}, "0": {"exp": "a zero"}, "10": {"exp": "a ten"}}},
    }
    (tmp_path / "meta_expressions" / "valid").mkdir(parents=True)
    (tmp_path / "meta_expressions" / "valid" / "meta_expressions.json").write_text(json.dumps({"videos": videos}))
    for vid in videos:
        _write_video(tmp_path / "valid" / "JPEGImages" / vid, ["00000"])
    # anno id k marks k + 1 pixels of column 0
    mask_dict = {str(k): [_rle_cols(20, 20, 0, k + 1)] for k in range(4)}
    (tmp_path / "valid" / "mask_dict.pkl").write_bytes(pickle.dumps(mask_dict))
    ds = load_dataset(f"davis17:root={tmp_path}")
    got = {s.id: int(s.masks.sum()) for s in ds}
    assert got == {"b/0": 4, "a/2": 3, "a/0": 1, "a/10": 2}
    assert ds[0].meta["protocol"] == "mllm"


def test_revos_fixture(tmp_path):
    names = ["00000", "00001"]
    _write_video(tmp_path / "JPEGImages" / "LVVIS" / "v1", names)  # ReVOS video ids contain slashes
    exps = {
        "0": {"exp": "the box", "obj_id": [1], "anno_id": [5], "type_id": 0},
        "1": {"exp": "what would you sit on?", "obj_id": [1, 2], "anno_id": [5, 6], "type_id": 1},
        "2": {"exp": "something else", "obj_id": [1], "anno_id": [5], "type_id": 2},
    }
    (tmp_path / "meta_expressions_valid_.json").write_text(json.dumps({"videos": {"LVVIS/v1": {"frames": names, "expressions": exps}}}))
    (tmp_path / "mask_dict.json").write_text(json.dumps({"5": [RECT_RLE, None], "6": [_rle_cols(20, 20, 0, 3), _rle_cols(20, 20, 1, 2)]}))
    (tmp_path / "mask_dict_foreground.json").write_text(json.dumps({"LVVIS/v1": {"masks_rle": [
        [RECT_RLE, _rle_cols(20, 20, 0, 3)], _rle_cols(20, 20, 1, 20),
    ]}}))
    ds = load_dataset(f"revos:root={tmp_path}")
    assert [(s.id, s.meta["subset"]) for s in ds] == [("LVVIS/v1/0", "referring"), ("LVVIS/v1/1", "reasoning")]
    check_contract(ds[1], "video")
    assert [int(m.sum()) for m in ds[1].masks] == [53, 2]
    assert [int(m.sum()) for m in ds.foreground("LVVIS/v1")] == [53, 20]
    assert [s.id for s in load_dataset(f"revos:root={tmp_path},subset=referring")] == ["LVVIS/v1/0"]


def _write_mjpeg_avi(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    """A minimal AVI with MJPEG frames (no video muxer is available offline; decord reads it via ffmpeg)."""
    def chunk(fourcc: bytes, data: bytes) -> bytes:
        return fourcc + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")

    def listing(kind: bytes, data: bytes) -> bytes:
        return b"LIST" + struct.pack("<I", len(data) + 4) + kind + data

    jpegs = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=95)
        jpegs.append(buf.getvalue())
    h, w = frames[0].shape[:2]
    n, biggest = len(frames), max(map(len, jpegs))
    avih = struct.pack("<10I4I", 1000000 // fps, 0, 0, 0x10, n, 0, 1, biggest, w, h, 0, 0, 0, 0)
    strh = b"vids" + b"MJPG" + struct.pack("<IHHIIIIIIIIhhhh", 0, 0, 0, 0, 1, fps, 0, n, biggest, 0xFFFFFFFF, 0, 0, 0, w, h)
    strf = struct.pack("<IiiHH4sIiiII", 40, w, h, 1, 24, b"MJPG", w * h * 3, 0, 0, 0, 0)
    header = listing(b"hdrl", chunk(b"avih", avih) + listing(b"strl", chunk(b"strh", strh) + chunk(b"strf", strf)))
    movi, index, offset = b"", b"", 4
    for data in jpegs:
        piece = chunk(b"00dc", data)
        index += b"00dc" + struct.pack("<III", 0x10, offset, len(data))
        movi += piece
        offset += len(piece)
    body = b"AVI " + header + listing(b"movi", movi) + chunk(b"idx1", index)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def test_video_file_frames_via_decord(tmp_path):
    # 48 px wide: decord pads these RGB rows, which the reader strips
    h, w = 32, 48
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
    split = tmp_path / "valid"
    (split / "JPEGImages").mkdir(parents=True)
    _write_mjpeg_avi(split / "JPEGImages" / "clip.avi", [np.full((h, w, 3), c, np.uint8) for c in colours])
    names = ["00000", "00001", "00002"]
    (split / "meta_expressions.json").write_text(json.dumps({"videos": {"clip": {"frames": names, "expressions": {"0": {"exp": "x"}}}}}))
    sample = load_dataset(f"mevis:root={tmp_path},split=valid")[0]
    assert sample.frames.frame_size() == (h, w)
    for frame, colour in zip(sample.frames, colours):
        assert frame.shape == (h, w, 3) and frame.dtype == np.uint8
        assert np.abs(frame.reshape(-1, 3).mean(0) - colour).max() < 8  # MJPEG is lossy


def test_strip_row_padding():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    padded = np.zeros((2, 12), dtype=np.uint8)
    padded[:, :9] = rgb.reshape(2, 9)
    assert np.array_equal(strip_row_padding(padded.reshape(2, 3, 4)), rgb)
    assert strip_row_padding(rgb) is rgb


# ---------------------------------------------------------------------------------------------
# mask helpers


def test_polygon_cover_is_exact(rng):
    for _ in range(20):
        mask = rng.random((17, 23)) < 0.4
        rects = mask_to_rectangles(mask)
        rebuilt = np.zeros_like(mask)
        for rect in rects:
            rebuilt |= rasterize_polygon(rect, *mask.shape)
        assert np.array_equal(rebuilt, mask)


def test_decode_segmentation_shapes():
    rect = rect_mask(20, 20, 3, 8, 2, 12)
    assert np.array_equal(decode_segmentation([[2, 3, 12, 3, 12, 8, 2, 8]], 20, 20), rect)
    assert np.array_equal(decode_segmentation(RECT_RLE, 20, 20), rect)
    assert np.array_equal(decode_segmentation([RECT_RLE, _rle_cols(20, 20, 0, 20)], 20, 20), rect | rect_mask(20, 20, 0, 20, 0, 1))
    assert not decode_segmentation([], 20, 20).any()
    with pytest.raises(ValueError, match="size"):
        decode_segmentation(RECT_RLE, 10, 10)


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("name", REAL_READERS)
def test_missing_root_names_the_path(tmp_path, name):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere") as err:
        load_dataset(f"{name}:root={missing}")
    assert "expected layout" in str(err.value)


@pytest.mark.parametrize("name", REAL_READERS)
def test_missing_split_file_names_the_path(tmp_path, name):
    (tmp_path / "root").mkdir()
    with pytest.raises(DataError) as err:
        load_dataset(f"{name}:root={tmp_path / 'root'}")
    assert str(tmp_path / "root") in str(err.value) and "expected layout" in str(err.value)


def test_malformed_json_and_records(tmp_path, exports):
    split = tmp_path / "valid_u"
    (split / "JPEGImages").mkdir(parents=True)
    path = split / "meta_expressions.json"
    path.write_text('{"videos": {')
    with pytest.raises(DataError, match="not valid JSON") as err:
        load_dataset(f"mevis:root={tmp_path}")
    assert str(path) in str(err.value)
    path.write_text(json.dumps({"videos": {"v": {"frames": ["0"], "expressions": {"3": {"text": "no exp key"}}}}}))
    with pytest.raises(DataError, match=r"\['expressions'\]\['3'\] has no field 'exp'") as err:
        load_dataset(f"mevis:root={tmp_path}")
    assert str(path) in str(err.value)
    # a refs file whose ref has no split
    refs = exports["refcoco"].root / "refcoco" / "refs(unc).p"
    good = refs.read_bytes()
    try:
        refs.write_bytes(pickle.dumps([{"ref_id": 1}]))
        with pytest.raises(DataError, match=r"ref #0 has no field 'split'"):
            load_dataset(exports["refcoco"].spec)
    finally:
        refs.write_bytes(good)


def test_unreadable_frame_or_annotation_fails_only_its_sample(tmp_path):
    result = export_synthetic("mevis", tmp_path, n=2, frames=3, size=32)
    ds = load_dataset(result.spec)
    sample = ds[0]  # frames are read on access: break one after the sample was built
    (tmp_path / "valid_u" / "JPEGImages" / "v00000" / "00001.jpg").write_bytes(b"not a jpeg")
    assert sample.frames[0].shape == (32, 32, 3)
    with pytest.raises(SampleError) as err:
        sample.frames[1]
    assert err.value.sample_id == "v00000/0"
    assert ds[1].frames[1].shape == (32, 32, 3)  # the other sample is fine
    ds.mask_dict.pop(ds.expression(1).anno_ids[0])
    with pytest.raises(SampleError, match="anno_id"):
        ds[1]


def test_unknown_option_lists_known_keys(tmp_path):
    with pytest.raises(SpecError, match="known options: root, split"):
        load_dataset(f"mevis:root={tmp_path},spilt=valid")


# ---------------------------------------------------------------------------------------------
# submissions


def test_submission_zip_layout(tmp_path):
    masks = np.zeros((2, 6, 8), dtype=bool)
    masks[0, 1:3, 2:5] = True
    for prefix in ("Annotations", ""):
        writer = SubmissionWriter(tmp_path / f"pred{prefix}", prefix=prefix)
        writer.add("video/a", "0", ["00000", "00005"], masks)
        writer.add("video/a", "1", ["00000", "00005"], ~masks)
        zip_path = writer.finish()
        with zipfile.ZipFile(zip_path) as archive:
            names = sorted(archive.namelist())
            lead = f"{prefix}/" if prefix else ""
            assert names == [f"{lead}video/a/{e}/{f}.png" for e in "01" for f in ("00000", "00005")]
            png = np.asarray(Image.open(io.BytesIO(archive.read(f"{lead}video/a/0/00000.png"))))
        assert png.dtype == np.uint8 and set(np.unique(png)) == {0, 255}
        assert np.array_equal(png > 0, masks[0])
    with pytest.raises(ValueError):
        SubmissionWriter(tmp_path / "bad").add("v", "0", ["00000"], masks)


# ---------------------------------------------------------------------------------------------
# ReVOS A and R


def _revos_case():
    gt = np.zeros((2, 4, 4), dtype=bool)
    pred = np.zeros_like(gt)
    fg = np.zeros_like(gt)
    gt[0, 0:2, 0:2] = True  # 4 px
    pred[0, 0:2, 1:3] = True  # 2 px on the target, 2 px off it
    fg[0] = gt[0]
    fg[0, 2:4, 2:4] = True  # foreground: the target and another 4-px object
    pred[1, 3, 0:3] = True  # frame 2: no target, 3 false-positive pixels
    fg[1, 0:2, 0:2] = True  # 4 px of other objects
    return pred, gt, fg


def test_revos_accuracy_and_robustness_by_hand():
    pred, gt, fg = _revos_case()
    # A: frame 1 disagrees on 4 of 16 pixels (0.75), frame 2 on 3 (0.8125)
    assert revos_accuracy(pred, gt) == pytest.approx((0.75 + 0.8125) / 2)
    # R: 1 - FP / foreground: frame 1 1 - 2/8 = 0.75, frame 2 1 - 3/4 = 0.25
    assert revos_robustness(pred, gt, fg) == pytest.approx(0.5, abs=1e-6)
    # clipped at 0 when false positives exceed the foreground
    assert revos_robustness(np.ones((4, 4), bool), np.zeros((4, 4), bool), fg[1]) == 0.0


def test_revos_summary_is_mean_of_subset_means():
    pred, gt, fg = _revos_case()
    acc = ReVOSAccumulator()
    acc.update("v/0", "referring", pred, gt, fg)
    acc.update("v/1", "reasoning", gt, gt, fg)  # perfect
    out = acc.compute()
    # J of the referring expression: frame 1 2/6, frame 2 0/3
    assert out["referring"]["J"] == pytest.approx(1 / 6)
    assert out["reasoning"] == pytest.approx({"J": 1.0, "F": 1.0, "JF": 1.0, "A": 1.0, "R": 1.0}, abs=1e-6)
    assert out["overall"]["J"] == pytest.approx((1 / 6 + 1) / 2)
    assert out["overall"]["A"] == pytest.approx(((0.75 + 0.8125) / 2 + 1) / 2)
    assert out["overall"]["R"] == pytest.approx((0.5 + 1) / 2, abs=1e-6)
    with pytest.raises(ValueError):
        acc.update("v/2", "other", gt, gt, fg)


# ---------------------------------------------------------------------------------------------
# CLI


def test_make_synthetic_command(tmp_path, capsys):
    from evtp_cli.cli import main

    with pytest.raises(SystemExit) as done:
        main(["make-synthetic", "--format", "reasonseg", "--out", str(tmp_path / "rs"), "-n", "2"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "reasonseg:root=" in out and len(load_dataset(f"reasonseg:root={tmp_path / 'rs'}")) == 2
    for bad in (["--format", "coco"], ["--format", "mevis", "--split", "test"]):
        with pytest.raises(SystemExit) as done:
            main(["make-synthetic", *bad, "--out", str(tmp_path / "x")])
        assert done.value.code == 2


def test_synthetic_jpeg_option_is_off_by_default():
    from evtp_cli.data.files import jpeg_roundtrip
    from evtp_cli.data.synthetic import generate_scene

    ds = load_dataset("synthetic-video:n=2,frames=3")
    scene = generate_scene(ds.rng(1), ds.scene_config())
    assert all(np.array_equal(a, b) for a, b in zip(ds[1].frames, scene.frames))
    jpeg = load_dataset("synthetic-video:n=2,frames=3,jpeg=true")[1]
    assert all(np.array_equal(a, jpeg_roundtrip(b)) for a, b in zip(jpeg.frames, scene.frames))


@pytest.mark.parametrize("fmt", ["refcoco", "mevis"])
def test_exported_folder_evaluates_like_its_synthetic_source(tmp_path, capsys, fmt):
    """End to end: tiny-ivs on an exported folder scores exactly as on `synthetic-*:jpeg=true`."""
    from evtp_cli.bench.results import METRIC_COLUMNS, read_results
    from evtp_cli.cli import main

    result = export_synthetic(fmt, tmp_path / fmt, n=4, seed=3)
    rows = {}
    for name, spec in (("reader", result.spec), ("source", result.source)):
        with pytest.raises(SystemExit) as done:
            main(["prune-eval", "-d", spec, "-p", "evtp", "-r", "0.1", "-o", str(tmp_path / name)])
        assert done.value.code == 0, capsys.readouterr().err
        rows[name] = read_results(tmp_path / name)["rows"]
    pick = lambda rs: [(r["pruner"], r["ratio"], r["n_samples"], *(r.get(c) for c in METRIC_COLUMNS)) for r in rs]  # noqa: E731
    assert pick(rows["reader"]) == pick(rows["source"])
    assert all(r["n_samples"] == 4 and r["n_failed"] == 0 for r in rows["reader"])


def test_split_without_ground_truth_needs_predict_only(tmp_path, capsys):
    """MeViS `valid` has no public masks: a scoring run is refused before anything is written; --predict-only
    writes one challenge zip per setting (video/expression/frame.png) and latency rows without accuracy."""
    from evtp_cli.bench.results import read_results
    from evtp_cli.cli import main

    result = export_synthetic("mevis", tmp_path / "mevis", n=2, seed=1, split="valid", frames=3, size=32)
    args = ["prune-eval", "-d", result.spec, "-p", "uniform", "-r", "0.2", "-o", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as done:
        main(args)
    err = capsys.readouterr().err
    assert done.value.code == 2 and "has no public ground truth" in err and "--predict-only" in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as done:
        main([*args, "--predict-only"])
    assert done.value.code == 0, capsys.readouterr().err
    rows = read_results(tmp_path / "run")["rows"]
    assert [(r["pruner"], r["ratio"]) for r in rows] == [("none", 1.0), ("uniform", 0.2)]
    for row in rows:
        assert row["JF"] is None and row["ms_total"] > 0 and row["n_samples"] == 2
        with zipfile.ZipFile(row["predictions_zip"]) as archive:
            names = sorted(archive.namelist())
            assert len(names) == 2 * 3 and all(n.endswith(".png") and n.count("/") == 2 for n in names)
            png = np.asarray(Image.open(io.BytesIO(archive.read(names[0]))))
            assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
