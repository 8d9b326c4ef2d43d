"""Metrics against independent straightforward implementations and hand-computed cases."""

import math

import numpy as np
import pytest

from evtp_cli.metrics import (
    IoUAccumulator,
    JFAccumulator,
    boundary_f,
    region_similarity,
)

# ---- independent reference: pixel loops and explicit Euclidean matching (no dilation) ----------


def ref_boundary(mask):
    """DAVIS seg2bmap written out pixel by pixel."""
    h, w = mask.shape
    b = np.zeros_like(mask, dtype=bool)
    for y in range(h):
        for x in range(w):
            v = mask[y, x]
            east = mask[y, x + 1] if x + 1 < w else False
            south = mask[y + 1, x] if y + 1 < h else False
            se = mask[y + 1, x + 1] if (x + 1 < w and y + 1 < h) else False
            if y == h - 1 and x == w - 1:
                b[y, x] = False
            elif y == h - 1:
                b[y, x] = v != east
            elif x == w - 1:
                b[y, x] = v != south
            else:
                b[y, x] = (v != east) or (v != south) or (v != se)
    return b


def ref_f(pred, gt, bound_th=0.008):
    r = math.ceil(bound_th * math.hypot(*pred.shape)) if bound_th < 1 else bound_th
    bp, bg = ref_boundary(pred), ref_boundary(gt)
    p_pts, g_pts = np.argwhere(bp), np.argwhere(bg)
    if len(p_pts) == 0 and len(g_pts) == 0:
        return 1.0
    if len(p_pts) == 0 or len(g_pts) == 0:
        return 0.0
    d = np.sqrt(((p_pts[:, None, :] - g_pts[None, :, :]) ** 2).sum(-1))
    precision = np.mean(d.min(1) <= r)
    recall = np.mean(d.min(0) <= r)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def ref_j(pred, gt):
    inter = sum(1 for p, g in zip(pred.flat, gt.flat) if p and g)
    union = sum(1 for p, g in zip(pred.flat, gt.flat) if p or g)
    return 1.0 if union == 0 else inter / union


def random_mask(rng, h, w):
    kind = rng.integers(4)
    if kind == 0:
        return rng.random((h, w)) < rng.uniform(0.05, 0.6)
    if kind == 1:  # blob
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, max(h, w) / 2)
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind == 2:  # rectangle touching a border sometimes
        m = np.zeros((h, w), bool)
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        m[y0 : y0 + rng.integers(1, h), x0 : x0 + rng.integers(1, w)] = True
        return m
    return np.zeros((h, w), bool) if rng.random() < 0.5 else np.ones((h, w), bool)


def test_j_and_f_match_reference_on_random_masks(rng):
    for _ in range(300):
        h, w = int(rng.integers(3, 40)), int(rng.integers(3, 40))
        gt = random_mask(rng, h, w)
        pred = gt.copy() if rng.random() < 0.1 else random_mask(rng, h, w)
        if rng.random() < 0.3:  # near-miss predictions exercise the tolerance
            pred = np.roll(gt, int(rng.integers(-2, 3)), axis=int(rng.integers(2)))
        assert abs(region_similarity(pred, gt) - ref_j(pred, gt)) < 1e-6
        for th in (0.008, 0.05, 2):
            assert abs(boundary_f(pred, gt, bound_th=th) - ref_f(pred, gt, th)) < 1e-6


def test_hand_computed_cases():
    a = np.zeros((4, 4), bool)
    a[1:3, 1:3] = True  # 4 pixels
    b = np.zeros((4, 4), bool)
    b[1:3, 1:4] = True  # 6 pixels
    assert region_similarity(a, b) == pytest.approx(4 / 6)
    empty = np.zeros((4, 4), bool)
    assert region_similarity(empty, empty) == 1.0
    assert boundary_f(empty, empty) == 1.0
    assert boundary_f(a, empty) == 0.0
    assert boundary_f(empty, a) == 0.0
    assert boundary_f(a, a) == 1.0
    # seg2bmap of a 2x2 square in a 4x4 image: rows 0-2, cols 0-2 minus the (0,0)->(?) pattern
    from evtp_cli.metrics import seg2bmap

    expected = np.array(
        [[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=bool
    )
    assert np.array_equal(seg2bmap(a), expected)


def test_iou_accumulator_giou_ciou_by_hand():
    acc = IoUAccumulator()
    p1 = np.array([[1, 1, 0, 0]], bool)
    g1 = np.array([[1, 0, 0, 0]], bool)  # I=1 U=2
    p2 = np.array([[0, 0, 0, 0]], bool)
    g2 = np.array([[0, 0, 0, 0]], bool)  # empty union -> 1.0, adds nothing to cIoU
    p3 = np.array([[1, 1, 1, 0]], bool)
    g3 = np.array([[255, 1, 0, 1]], np.uint8)  # pixel 0 ignored: I=1 U=3
    acc.update(p1, g1)
    acc.update(p2, g2)
    acc.update(p3, g3)
    out = acc.compute()
    assert out["giou"] == pytest.approx((0.5 + 1.0 + 1 / 3) / 3, abs=1e-12)
    assert out["ciou"] == pytest.approx((1 + 0 + 1) / (2 + 0 + 3), abs=1e-12)


def test_accumulators_batchwise_equal_all_at_once(rng):
    preds = [random_mask(rng, 12, 15) for _ in range(40)]
    gts = [random_mask(rng, 12, 15) for _ in range(40)]
    whole = IoUAccumulator()
    for p, g in zip(preds, gts):
        whole.update(p, g)
    parts = [IoUAccumulator() for _ in range(3)]
    for i, (p, g) in enumerate(zip(preds, gts)):
        parts[i % 3].update(p, g)
    merged = IoUAccumulator()
    for part in parts:
        merged.merge(part)
    assert merged.compute() == pytest.approx(whole.compute(), abs=1e-12)
    # independent: gIoU = mean IoU, cIoU = sum I / sum U
    ious = [ref_j(p, g) for p, g in zip(preds, gts)]
    inter = sum(int((p & g).sum()) for p, g in zip(preds, gts))
    union = sum(int((p | g).sum()) for p, g in zip(preds, gts))
    assert whole.compute()["giou"] == pytest.approx(np.mean(ious), abs=1e-9)
    assert whole.compute()["ciou"] == pytest.approx(inter / union, abs=1e-9)


def test_jf_per_expression_then_mean(rng):
    videos = {f"e{i}": ([random_mask(rng, 10, 11) for _ in range(n)], [random_mask(rng, 10, 11) for _ in range(n)]) for i, n in enumerate([3, 5, 1, 4])}
    all_at_once = JFAccumulator()
    chunked = JFAccumulator()
    for eid, (preds, gts) in videos.items():
        all_at_once.update(eid, preds, gts)
        for s in range(0, len(preds), 2):  # frames of one expression arriving in pieces
            chunked.update(eid, preds[s : s + 2], gts[s : s + 2])
    a, b = all_at_once.compute(), chunked.compute()
    assert a == pytest.approx(b, abs=1e-12)
    j = np.mean([np.mean([ref_j(p, g) for p, g in zip(*v)]) for v in videos.values()])
    f = np.mean([np.mean([ref_f(p, g) for p, g in zip(*v)]) for v in videos.values()])
    assert a["J"] == pytest.approx(j, abs=1e-6)
    assert a["F"] == pytest.approx(f, abs=1e-6)
    assert a["JF"] == pytest.approx((j + f) / 2, abs=1e-6)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        region_similarity(np.zeros((2, 2), bool), np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="frames"):
        JFAccumulator().update("x", [np.zeros((2, 2), bool)], [])
