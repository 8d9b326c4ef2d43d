"""ReVOS reader (videos; referring and reasoning expressions, scored per subset).

Format and protocol learned from the ReVOS release (github.com/cilinyan/ReVOS-api, README "File Structure")
and VISA's evaluation (github.com/cilinyan/VISA, tools/eval_revos.py, tools/metrics.py):
`root/JPEGImages/<video>/<frame>.jpg` (train and valid share it), `root/meta_expressions_<split>_.json` with
`exp`, `obj_id`, `anno_id` and `type_id` per expression, `root/mask_dict.json` (`{anno_id: [RLE or null per
frame]}`; the target is the union over `anno_id`) and `root/mask_dict_foreground.json`
(`{video: {"masks_rle": [RLE per frame]}}`, every annotated object of the frame, used by the robustness score).

`type_id` 0 is a referring expression and 1 a reasoning one; the evaluation reports each subset's means and
"overall" as the mean of the two subset means, and leaves other type ids out of every mean, so this reader
skips them. A and R (robustness) are in `evtp_cli.metrics.revos`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from evtp_cli.data.files import get_field, load_json, require_dir, require_file
from evtp_cli.data.masks import frame_masks_from_rles
from evtp_cli.data.rvos import (
    Expression,
    ExpressionVideoDataset,
    load_mask_dict,
    read_anno_ids,
    read_expressions,
)
from evtp_cli.errors import DataError, SampleError

SUBSETS = {0: "referring", 1: "reasoning"}

LAYOUT = """\
  ROOT/
    JPEGImages/<video>/<frame>.jpg
    mask_dict.json                 {anno_id: [RLE or null per frame]}
    mask_dict_foreground.json      {video: {"masks_rle": [RLE per frame]}}
    meta_expressions_train_.json   meta_expressions_valid_.json
                                   {"videos": {video: {"frames", "expressions": {id: {"exp", "anno_id", "type_id"}}}}}"""


class ReVOS(ExpressionVideoDataset):
    """ReVOS: `meta["subset"]` is "referring" or "reasoning"; `foreground(video_id)` feeds the R metric."""

    name = "revos"
    layout = LAYOUT
    protocol = "ReVOS (VISA): J, F, A, R per expression; mean per subset; overall = mean of the subset means"

    @dataclass
    class Config:
        root: str
        split: Literal["train", "valid"] = "valid"
        subset: Literal["all", "referring", "reasoning"] = "all"

    def _load(self) -> list[Expression]:
        path = self.root / f"meta_expressions_{self.config.split}_.json"
        items = read_expressions(path, LAYOUT)
        require_dir(self.root / "JPEGImages", LAYOUT, "frame folder")
        read_anno_ids(items, path)
        kept = []
        for item in items:
            where = f"videos[{item.video_id!r}]['expressions'][{item.exp_id!r}]"
            subset = SUBSETS.get(get_field(item.record, "type_id", path, where, int))
            if subset is not None and self.config.subset in ("all", subset):
                kept.append(item)
        self.mask_dict = load_mask_dict(self.root / "mask_dict.json", LAYOUT)
        require_file(self.root / "mask_dict_foreground.json", LAYOUT, "foreground mask file")  # read on first use
        self._foreground: dict | None = None
        return kept

    def frame_folder(self, item: Expression) -> Path:
        return self.root / "JPEGImages" / item.video_id

    def extra_meta(self, item: Expression) -> dict:
        return {"subset": SUBSETS[item.record["type_id"]], "type_id": item.record["type_id"], "anno_id": item.anno_ids}

    def make_scorer(self):
        """Dataset-specific scoring for the evaluation loop (A, R, per-subset J&F; overall = mean of subsets)."""
        from evtp_cli.metrics.revos import ReVOSScorer

        return ReVOSScorer(self.foreground)

    def foreground(self, video_id: str) -> np.ndarray:
        """bool [T, H, W]: every annotated object of each frame (`mask_dict_foreground.json`), for R."""
        path = self.root / "mask_dict_foreground.json"
        if self._foreground is None:
            data = load_json(path, LAYOUT, "foreground mask file")
            if not isinstance(data, dict):
                raise DataError(f"malformed foreground mask file {path}: expected {{video: {{'masks_rle': [...]}}}}")
            self._foreground = data
        record = self._foreground.get(video_id)
        if not isinstance(record, dict) or not isinstance(record.get("masks_rle"), list):
            raise SampleError(video_id, f"no foreground masks ('masks_rle') for this video in {path}")
        rles = record["masks_rle"]
        # a frame's entry may be one RLE or a list of RLEs (one per object)
        per_frame = [rle if isinstance(rle, list) else [rle] for rle in rles]
        most = max((len(f) for f in per_frame), default=0)
        per_object = [[f[k] if k < len(f) else None for f in per_frame] for k in range(most)]
        video = next((item.video for item in self._items if item.video_id == video_id), {})
        shape = (int(video["height"]), int(video["width"])) if "height" in video and "width" in video else None
        return frame_masks_from_rles(per_object, len(rles), shape)
