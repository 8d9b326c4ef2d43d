"""Ref-DAVIS17 reader, MLLM protocol (videos; one sample per expression).

Format and protocol learned from VISA (github.com/cilinyan/VISA, tools/eval_davis17.py, utils/dataset_config.py)
and Sa2VA (github.com/bytedance/Sa2VA, projects/sa2va/evaluation/ref_vos_eval.py): frames in
`root/<split>/JPEGImages/<video>/<frame>.jpg`, expressions in `root/meta_expressions/<split>/meta_expressions.json`
(ReferFormer's conversion of Ref-DAVIS17), and the ground truth in `root/<split>/mask_dict.pkl`, a pickled
`{anno_id: [RLE or None per frame]}`. The expressions carry no `anno_id`: it is assigned by counting
expressions over the sorted video ids and, within a video, the sorted expression ids (string order), as
the VISA evaluation does. A `mask_dict.json` of the same shape is read when there is no pickle.

Scores follow that MLLM protocol: J and F per frame, mean per expression, then mean over all expressions
(as MeViS). This is not the original Ref-DAVIS17 protocol (DAVIS toolkit, per-annotator averaging).
"""

from __future__ import annotations

from evtp_cli.data.rvos import (
    Expression,
    YTVOSLayoutDataset,
    load_mask_dict,
    read_anno_ids,
)

LAYOUT = """\
  ROOT/
    meta_expressions/{train,valid}/meta_expressions.json
    valid/JPEGImages/<video>/<frame>.jpg
    valid/mask_dict.pkl        {anno_id: [RLE or None per frame]}, anno_id counted over sorted videos and exp ids
                               (or mask_dict.json)"""


def assign_anno_ids(items: list[Expression]) -> None:
    """VISA's numbering: 0, 1, ... over videos in sorted order and their expression ids in sorted (string) order."""
    order = sorted(items, key=lambda item: (item.video_id, item.exp_id))
    for count, item in enumerate(order):
        item.anno_ids = [str(count)]


class RefDAVIS17(YTVOSLayoutDataset):
    """Ref-DAVIS17 as MLLM papers (VISA, Sa2VA) evaluate it: per-expression J&F averaging."""

    name = "davis17"
    layout = LAYOUT
    protocol = "MLLM Ref-DAVIS17 (VISA / Sa2VA): J, F mean per expression, then mean over expressions"

    def _finish(self, items: list[Expression]) -> list[Expression]:
        pickle_path = self.split_dir / "mask_dict.pkl"
        json_path = self.split_dir / "mask_dict.json"
        self.mask_dict = load_mask_dict(json_path if json_path.is_file() and not pickle_path.is_file() else pickle_path, LAYOUT)
        if all("anno_id" in item.record for item in items):
            read_anno_ids(items, self.expressions_path)
        else:
            assign_anno_ids(items)
        return items

    def extra_meta(self, item: Expression) -> dict:
        return {"anno_id": item.anno_ids, "protocol": "mllm"}
