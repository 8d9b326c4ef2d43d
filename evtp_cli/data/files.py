"""File access shared by the dataset readers: roots, split files, JSON and pickle with clear errors,
images, palette PNGs, and video frames (a folder of JPEGs, or one video file read with decord).

Errors a user can fix (a missing root or split file, a file that is not valid JSON, a record without a
field the format requires) are `DataError`s that name the path and the expected layout. A single frame
or annotation that cannot be read is a `SampleError` naming the sample, so only that sample fails.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from evtp_cli.data.base import LazyFrames
from evtp_cli.errors import DataError, SampleError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


def require_dir(path: Path, layout: str, what: str = "dataset root") -> Path:
    """`path` if it is a folder, else a DataError naming it and the expected layout."""
    if not path.is_dir():
        raise DataError(f"{what} {path} does not exist or is not a folder; expected layout:\n{layout}")
    return path


def require_file(path: Path, layout: str, what: str = "file") -> Path:
    if not path.is_file():
        raise DataError(f"missing {what} {path}; expected layout:\n{layout}")
    return path


def load_json(path: Path, layout: str, what: str = "annotation file") -> Any:
    """Parse a JSON file. Falls back to cp1252 for the few ReasonSeg files that are not UTF-8 (as LISA does)."""
    require_file(path, layout, what)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def load_pickle(path: Path, layout: str, what: str = "annotation file") -> Any:
    """Unpickle a file of the public releases (refs(unc).p, mask_dict.pkl). Pickles can run code: only load
    files from a source you trust."""
    require_file(path, layout, what)
    try:
        with path.open("rb") as fh:
            return pickle.load(fh)
    except UnicodeDecodeError:
        # pickles written by Python 2 (the refer API's refs files)
        with path.open("rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DataError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc})") from None


def get_field(record: Any, key: str, path: Path, where: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """`record[key]`, or a DataError naming the file, the record and the missing/ill-typed field."""
    if not isinstance(record, dict) or key not in record:
        raise DataError(f"malformed record in {path}: {where} has no field {key!r}")
    value = record[key]
    if kind is not None and not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(
            f"malformed record in {path}: {where}[{key!r}] should be {names}, got {type(value).__name__}"
        )
    return value


# ---------------------------------------------------------------------------------------------
# images


def read_rgb(path: Path, sample_id: str) -> np.ndarray:
    """uint8 RGB [H, W, 3]; a missing or corrupt file fails only this sample."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise SampleError(sample_id, f"cannot read image {path}: {exc}") from None


def image_size(path: Path, sample_id: str) -> tuple[int, int]:
    """(height, width) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, ValueError) as exc:
        raise SampleError(sample_id, f"cannot read image {path}: {exc}") from None
    return height, width


def read_label_png(path: Path, sample_id: str) -> np.ndarray:
    """Label map [H, W] from a palette (or grayscale) PNG: the pixel value is the palette index."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I", "I;16"):
                raise ValueError(f"expected a palette or grayscale PNG, got mode {img.mode}")
            return np.asarray(img)
    except (OSError, ValueError) as exc:
        raise SampleError(sample_id, f"cannot read annotation {path}: {exc}") from None


def single_image(path: Path, sample_id: str) -> LazyFrames:
    return LazyFrames(1, lambda _i: read_rgb(path, sample_id))


# ---------------------------------------------------------------------------------------------
# video frames


class VideoFrames(LazyFrames):
    """The listed frames of one video, read on access from `<folder>/<name>.jpg` or from a video file.

    `frame_size()` gives (H, W) without decoding a whole frame where the format allows it.
    """

    def __init__(self, count: int, loader: Callable[[int], np.ndarray], size: Callable[[], tuple[int, int]]):
        super().__init__(count, loader)
        self._size = size

    def frame_size(self) -> tuple[int, int]:
        return self._size()


def find_video_file(folder: Path) -> Path | None:
    """`<folder>.mp4` (or another container decord reads) next to where the frame folder would be."""
    for ext in VIDEO_EXTENSIONS:
        candidate = folder.with_name(folder.name + ext)
        if candidate.is_file():
            return candidate
    return None


def open_video_frames(folder: Path, frame_names: Sequence[str], sample_id: str) -> VideoFrames:
    """Frames `frame_names` of the video whose frames live in `folder` (or in `folder.mp4` etc.)."""
    names = list(frame_names)
    if folder.is_dir():
        return _folder_frames(folder, names, sample_id)
    video = find_video_file(folder)
    if video is not None:
        return _DecordFrames(video, names, sample_id).frames()
    raise SampleError(
        sample_id, f"no frame folder {folder} and no video file {folder.name}{{{','.join(VIDEO_EXTENSIONS)}}}"
    )


def _frame_path(folder: Path, name: str) -> Path:
    for ext in FRAME_EXTENSIONS:
        path = folder / f"{name}{ext}"
        if path.is_file():
            return path
    return folder / f"{name}.jpg"  # reported as missing by the reader


def _folder_frames(folder: Path, names: list[str], sample_id: str) -> VideoFrames:
    return VideoFrames(
        len(names),
        lambda i: read_rgb(_frame_path(folder, names[i]), sample_id),
        lambda: image_size(_frame_path(folder, names[0]), sample_id),
    )


class _DecordFrames:
    """Frames from a video file with decord, opened on first access.

    The i-th listed frame is the i-th decoded frame when the file has exactly as many frames as are
    listed; otherwise numeric frame names ("00005") index the decoded frames (Ref-YouTube-VOS lists
    every fifth frame of the full video).
    """

    def __init__(self, path: Path, names: list[str], sample_id: str):
        self.path = path
        self.names = names
        self.sample_id = sample_id
        self._reader: Any = None

    def frames(self) -> VideoFrames:
        return VideoFrames(len(self.names), self.frame, lambda: self.frame(0).shape[:2])

    def _open(self) -> Any:
        if self._reader is None:
            try:
                import decord

                self._reader = decord.VideoReader(str(self.path), num_threads=1)
            except Exception as exc:  # noqa: BLE001 - decord raises its own error types
                raise SampleError(self.sample_id, f"cannot open video {self.path}: {exc}") from None
        return self._reader

    def _index(self, i: int, total: int) -> int:
        if total == len(self.names) or not self.names[i].isdigit():
            index = i
        else:
            index = int(self.names[i])
        if index >= total:
            raise SampleError(self.sample_id, f"frame {self.names[i]} is past the end of {self.path} ({total} frames)")
        return index

    def frame(self, i: int) -> np.ndarray:
        reader = self._open()
        index = self._index(i, len(reader))
        try:
            return strip_row_padding(reader[index].asnumpy())
        except Exception as exc:  # noqa: BLE001
            raise SampleError(self.sample_id, f"cannot decode frame {index} of {self.path}: {exc}") from None


def strip_row_padding(array: np.ndarray) -> np.ndarray:
    """decord returns some widths (e.g. 48 px) with each RGB row padded to an aligned stride, which shows
    up as a channel count other than 3; keep the first 3 * width bytes of each row."""
    if array.ndim == 3 and array.shape[2] == 3:
        return array
    height, width = array.shape[:2]
    rows = np.ascontiguousarray(array).reshape(height, -1)
    if rows.shape[1] < 3 * width:
        raise ValueError(f"decoded frame of shape {array.shape} is not RGB")
    return np.ascontiguousarray(rows[:, : 3 * width].reshape(height, width, 3))


# ---------------------------------------------------------------------------------------------
# JPEG, as the exporter writes frames

JPEG_QUALITY = 95  # with 4:4:4 chroma: the synthetic noise textures lose about 3 grey levels on average


def encode_jpeg(frame: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """The JPEG bytes the exporter writes for a uint8 RGB frame."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def jpeg_roundtrip(frame: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """The frame a reader decodes from the exporter's JPEG (so synthetic data can match an exported folder)."""
    with Image.open(io.BytesIO(encode_jpeg(frame, quality))) as img:
        return np.asarray(img.convert("RGB"))
