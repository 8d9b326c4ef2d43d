"""Ref-YouTube-VOS reader (videos; one sample per expression).

Format learned from ReferFormer (github.com/wjn922/ReferFormer): datasets/ytvos.py, inference_ytvos.py and
docs/Ref-Youtube-VOS.md. `root/meta_expressions/<split>/meta_expressions.json` lists the frames and the
expressions (`exp`, and `obj_id` for train); frames are `root/<split>/JPEGImages/<video>/<frame>.jpg`; train
ground truth is `root/train/Annotations/<video>/<frame>.png`, palette PNGs whose pixel value is the object id.
The competition's valid expressions file also lists the 305 test videos; as ReferFormer does, the videos
of `meta_expressions/test/meta_expressions.json` (when present) are dropped, leaving the 202 valid videos.
valid has no public ground truth: predictions are submitted as a zip of
`Annotations/<video>/<exp_id>/<frame>.png`.
"""

from __future__ import annotations

import numpy as np

from evtp_cli.data.files import VideoFrames, get_field, read_label_png, require_dir
from evtp_cli.data.rvos import Expression, YTVOSLayoutDataset, read_expressions
from evtp_cli.errors import SampleError

LAYOUT = """\
  ROOT/
    meta_expressions/{train,valid,test}/meta_expressions.json
    train/JPEGImages/<video>/<frame>.jpg      train/Annotations/<video>/<frame>.png (palette: value = obj_id)
    valid/JPEGImages/<video>/<frame>.jpg"""


class RefYouTubeVOS(YTVOSLayoutDataset):
    """Ref-YouTube-VOS: train has palette-PNG ground truth; valid is predict-only (submission zip)."""

    name = "refytvos"
    layout = LAYOUT

    def _finish(self, items: list[Expression]) -> list[Expression]:
        test_file = self.root / "meta_expressions" / "test" / "meta_expressions.json"
        if self.config.split == "valid" and test_file.is_file():
            test_videos = {item.video_id for item in read_expressions(test_file, LAYOUT)}
            items = [item for item in items if item.video_id not in test_videos]
        self._annotations = None
        if self.config.split == "train":
            self._annotations = require_dir(self.root / "train" / "Annotations", LAYOUT, "annotation folder")
            for item in items:
                where = f"videos[{item.video_id!r}]['expressions'][{item.exp_id!r}]"
                get_field(item.record, "obj_id", self.expressions_path, where, (str, int))
        return items

    @property
    def has_ground_truth(self) -> bool:
        return self._annotations is not None

    def ground_truth(self, item: Expression, frames: VideoFrames, sample_id: str) -> np.ndarray | None:
        if self._annotations is None:
            return None
        obj_id = int(item.record["obj_id"])
        folder = self._annotations / item.video_id
        masks = []
        for name in item.frames:
            path = folder / f"{name}.png"
            if not path.is_file():
                raise SampleError(sample_id, f"missing annotation {path}")
            masks.append(read_label_png(path, sample_id) == obj_id)
        return np.stack(masks)

    def extra_meta(self, item: Expression) -> dict:
        return {"obj_id": str(item.record["obj_id"])} if "obj_id" in item.record else {}
