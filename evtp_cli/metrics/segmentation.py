"""IVS segmentation metrics: J, F, J&F (DAVIS 2017 / MeViS protocol) and gIoU, cIoU (LISA / Sa2VA).

Definitions follow the public evaluation code:
- DAVIS 2017 (github.com/davisvideochallenge/davis2017-evaluation, davis2017/metrics.py):
  J = |P∩G| / |P∪G| (1 when the union is empty); F from 1-pixel boundary maps (`seg2bmap`), each
  dilated by a disk of radius ceil(bound_th · image diagonal); precision/recall edge cases as there.
- MeViS / Ref-YouTube-VOS MLLM evaluation: per-expression mean of per-frame J and F, then the mean
  over expressions; J&F = (J + F) / 2.
- LISA (github.com/dvlab-research/LISA, validate): gIoU = mean of per-sample foreground IoU with an
  empty union counting 1.0, cIoU = ΣI / ΣU; label 255 is ignored. LISA divides by (U + 1e-5); we use
  the exact ratio (the difference is below 1e-5 / U).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Hashable, Sequence

import numpy as np

IGNORE_LABEL = 255


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask
    return mask.astype(bool)


def split_label_map(gt: np.ndarray, ignore: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, ignore) from a bool mask or a label map in which 255 marks ignored pixels."""
    gt = np.asarray(gt)
    if gt.dtype == bool:
        fg = gt
        ign = np.zeros_like(gt)
    else:
        ign = gt == IGNORE_LABEL
        fg = (gt != 0) & ~ign
    if ignore is not None:
        ign = ign | _as_bool(ignore)
    return fg, ign


def region_similarity(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """J = |P∩G| / |P∪G| over non-void pixels; 1.0 when the union is empty."""
    pred, gt = _as_bool(pred), _as_bool(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    valid = np.ones_like(gt) if void is None else ~_as_bool(void)
    inter = np.count_nonzero(pred & gt & valid)
    union = np.count_nonzero((pred | gt) & valid)
    return 1.0 if union == 0 else inter / union


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """1-pixel boundary map: a pixel differs from its east, south or south-east neighbour (DAVIS)."""
    seg = _as_bool(mask)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def disk(radius: float) -> np.ndarray:
    """Disk structuring element: offsets (x, y) in [-r, r]² with x² + y² <= r² (as skimage.morphology.disk)."""
    offsets = np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(offsets, offsets)
    return xx**2 + yy**2 <= radius**2


def dilate(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Binary dilation with a symmetric footprint; pixels outside the image count as background."""
    r_y, r_x = footprint.shape[0] // 2, footprint.shape[1] // 2
    padded = np.pad(mask, ((r_y, r_y), (r_x, r_x)))
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy, dx in zip(*np.nonzero(footprint)):
        out |= padded[dy : dy + h, dx : dx + w]
    return out


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008, void: np.ndarray | None = None) -> float:
    """Boundary F-measure as in the DAVIS 2017 evaluation (`f_measure`)."""
    pred, gt = _as_bool(pred), _as_bool(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    if void is not None:
        keep = ~_as_bool(void)
        pred, gt = pred & keep, gt & keep
    bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*pred.shape))
    fg_boundary = seg2bmap(pred)
    gt_boundary = seg2bmap(gt)
    footprint = disk(bound_pix)
    fg_dil = dilate(fg_boundary, footprint)
    gt_dil = dilate(gt_boundary, footprint)
    n_fg = np.count_nonzero(fg_boundary)
    n_gt = np.count_nonzero(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.count_nonzero(fg_boundary & gt_dil) / n_fg
        recall = np.count_nonzero(gt_boundary & fg_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


class IoUAccumulator:
    """gIoU / cIoU over image samples. `update` per sample; `compute` divides once at the end."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sum_iou = 0.0
        self.n = 0
        self.sum_inter = 0
        self.sum_union = 0

    def update(self, pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> dict[str, float]:
        """Add one sample (a frame, or a [T, H, W] stack counted as one sample). Returns its IoU."""
        pred = _as_bool(pred)
        fg, ign = split_label_map(gt, ignore)
        if pred.shape != fg.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {fg.shape} differ in shape")
        valid = ~ign
        inter = int(np.count_nonzero(pred & fg & valid))
        union = int(np.count_nonzero((pred | fg) & valid))
        iou = 1.0 if union == 0 else inter / union
        self.sum_iou += iou
        self.n += 1
        self.sum_inter += inter
        self.sum_union += union
        return {"iou": iou, "inter": inter, "union": union}

    def merge(self, other: "IoUAccumulator") -> None:
        self.sum_iou += other.sum_iou
        self.n += other.n
        self.sum_inter += other.sum_inter
        self.sum_union += other.sum_union

    def compute(self) -> dict[str, float]:
        if self.n == 0:
            return {"giou": float("nan"), "ciou": float("nan")}
        ciou = 1.0 if self.sum_union == 0 else self.sum_inter / self.sum_union
        return {"giou": self.sum_iou / self.n, "ciou": ciou}


class JFAccumulator:
    """J, F and J&F over expressions: per-expression frame mean, then mean over expressions.

    Frames of one expression may arrive in several `update` calls; they are pooled per expression.
    """

    def __init__(self, bound_th: float = 0.008) -> None:
        self.bound_th = bound_th
        self.reset()

    def reset(self) -> None:
        # expr_id -> [sum J, sum F, frame count]
        self.per_expr: OrderedDict[Hashable, list[float]] = OrderedDict()

    def update(
        self,
        expr_id: Hashable,
        frame_preds: Sequence[np.ndarray] | np.ndarray,
        frame_gts: Sequence[np.ndarray] | np.ndarray,
        frame_voids: Sequence[np.ndarray] | np.ndarray | None = None,
    ) -> dict[str, float]:
        """Add frames of one expression. Returns the J, F of these frames (means)."""
        if len(frame_preds) != len(frame_gts):
            raise ValueError(f"{len(frame_preds)} predicted frames but {len(frame_gts)} ground-truth frames")
        if len(frame_gts) == 0:
            raise ValueError("no frames given")
        sum_j = sum_f = 0.0
        for i, (pred, gt) in enumerate(zip(frame_preds, frame_gts)):
            void = None if frame_voids is None else frame_voids[i]
            sum_j += region_similarity(pred, gt, void)
            sum_f += boundary_f(pred, gt, self.bound_th, void)
        acc = self.per_expr.setdefault(expr_id, [0.0, 0.0, 0])
        acc[0] += sum_j
        acc[1] += sum_f
        acc[2] += len(frame_gts)
        n = len(frame_gts)
        return {"J": sum_j / n, "F": sum_f / n, "JF": (sum_j + sum_f) / (2 * n)}

    def merge(self, other: "JFAccumulator") -> None:
        for key, (sj, sf, n) in other.per_expr.items():
            acc = self.per_expr.setdefault(key, [0.0, 0.0, 0])
            acc[0] += sj
            acc[1] += sf
            acc[2] += n

    def compute(self) -> dict[str, float]:
        if not self.per_expr:
            return {"J": float("nan"), "F": float("nan"), "JF": float("nan")}
        js = [sj / n for sj, _, n in self.per_expr.values()]
        fs = [sf / n for _, sf, n in self.per_expr.values()]
        j = float(np.mean(js))
        f = float(np.mean(fs))
        return {"J": j, "F": f, "JF": (j + f) / 2.0}
