"""ReVOS metrics: accuracy A and robustness R, and the per-subset summary of the ReVOS evaluation.

Definitions from VISA's evaluation (github.com/cilinyan/VISA, tools/metrics.py `get_r2vos_accuracy`,
`get_r2vos_robustness`; tools/eval_revos.py):
- A, per frame: the fraction of pixels on which prediction and ground truth agree.
- R, per frame: max(0, 1 - |P \\ G| / (|foreground| + 1e-6)), where P \\ G are the predicted pixels outside the
  target and `foreground` is every annotated object of that frame (`mask_dict_foreground.json`).
- Each is averaged over the frames of an expression, then over the expressions of a subset (referring:
  type_id 0, reasoning: type_id 1); "overall" is the mean of the two subset means, for J, F, J&F, A and R.
VISA applies the formulas to uint8 maps read from PNGs; on binary masks, as here, they are the same.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable, Sequence

import numpy as np

from evtp_cli.metrics.segmentation import JFAccumulator

SUBSETS = ("referring", "reasoning")
ROBUSTNESS_EPS = 1e-6


def _frames(masks: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    array = np.asarray(masks).astype(bool)
    return array[None] if array.ndim == 2 else array


def revos_accuracy(pred: Sequence[np.ndarray] | np.ndarray, gt: Sequence[np.ndarray] | np.ndarray) -> float:
    """A: mean over frames of the pixel agreement between prediction and ground truth ([T, H, W] or [H, W])."""
    p, g = _frames(pred), _frames(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and ground truth {g.shape} differ in shape")
    return float(np.mean([(pf == gf).mean() for pf, gf in zip(p, g)]))


def revos_robustness(
    pred: Sequence[np.ndarray] | np.ndarray,
    gt: Sequence[np.ndarray] | np.ndarray,
    foreground: Sequence[np.ndarray] | np.ndarray,
) -> float:
    """R: mean over frames of max(0, 1 - false-positive pixels / (foreground pixels + 1e-6))."""
    p, g, fg = _frames(pred), _frames(gt), _frames(foreground)
    if not p.shape == g.shape == fg.shape:
        raise ValueError(f"prediction {p.shape}, ground truth {g.shape} and foreground {fg.shape} differ in shape")
    scores = [
        max(1.0 - np.count_nonzero(pf & ~gf) / (np.count_nonzero(ff) + ROBUSTNESS_EPS), 0.0)
        for pf, gf, ff in zip(p, g, fg)
    ]
    return float(np.mean(scores))


class ReVOSAccumulator:
    """J, F, J&F, A, R per subset and overall, as the ReVOS evaluation reports them."""

    def __init__(self, bound_th: float = 0.008) -> None:
        self.jf = {subset: JFAccumulator(bound_th) for subset in SUBSETS}
        # (subset, expr_id) -> [sum A, sum R, frames]
        self.ar: OrderedDict[tuple[str, Hashable], list[float]] = OrderedDict()

    def update(
        self,
        expr_id: Hashable,
        subset: str,
        frame_preds: Sequence[np.ndarray] | np.ndarray,
        frame_gts: Sequence[np.ndarray] | np.ndarray,
        foregrounds: Sequence[np.ndarray] | np.ndarray,
    ) -> dict[str, float]:
        """Add frames of one expression of `subset` ("referring" or "reasoning"); returns their J, F, JF, A, R."""
        if subset not in self.jf:
            raise ValueError(f"subset {subset!r} is not one of {', '.join(SUBSETS)}")
        scores = self.jf[subset].update(expr_id, frame_preds, frame_gts)
        n = len(frame_gts)
        a = revos_accuracy(frame_preds, frame_gts)
        r = revos_robustness(frame_preds, frame_gts, foregrounds)
        acc = self.ar.setdefault((subset, expr_id), [0.0, 0.0, 0])
        acc[0] += a * n
        acc[1] += r * n
        acc[2] += n
        return {**scores, "A": a, "R": r}

    def compute(self) -> dict[str, dict[str, float]]:
        """{"referring": {...}, "reasoning": {...}, "overall": {...}} with J, F, JF, A, R in [0, 1].

        "overall" averages the subsets that have expressions (both, in a full ReVOS run)."""
        out: dict[str, dict[str, float]] = {}
        for subset in SUBSETS:
            per_expr = [(sa / n, sr / n) for (s, _), (sa, sr, n) in self.ar.items() if s == subset]
            if not per_expr:
                continue
            scores = self.jf[subset].compute()
            scores["A"] = float(np.mean([a for a, _ in per_expr]))
            scores["R"] = float(np.mean([r for _, r in per_expr]))
            out[subset] = scores
        if out:
            out["overall"] = {key: float(np.mean([out[s][key] for s in out])) for key in ("J", "F", "JF", "A", "R")}
        return out


class ReVOSScorer:
    """Adapts ReVOSAccumulator to the evaluation loop: rows get the overall J/F/J&F (mean of the subset
    means, as ReVOS reports), A and R, and J&F per subset."""

    def __init__(self, foreground: Callable[[str], np.ndarray]) -> None:
        self.foreground = foreground
        self.acc = ReVOSAccumulator()

    def update(self, sample, masks: np.ndarray) -> dict[str, float]:
        meta = sample.meta
        out = self.acc.update(sample.id, meta["subset"], list(masks), list(sample.masks), self.foreground(meta["video_id"]))
        return {"A": out["A"], "R": out["R"]}

    def replay(self, rec: dict) -> bool:
        """Restore one finished sample from its samples.jsonl record (J, F, A, R, subset, frames); False
        when the record lacks a field this scorer needs."""
        if "subset" not in rec or "frames" not in rec:
            return False
        n, key = int(rec["frames"]), ("replayed", rec["id"])
        self.acc.jf[rec["subset"]].per_expr[key] = [rec["J"], rec["F"], 1]
        self.acc.ar[(rec["subset"], key)] = [rec["A"] * n, rec["R"] * n, n]
        return True

    def compute(self) -> dict[str, float | None]:
        res = self.acc.compute()
        row: dict[str, float | None] = {k: res.get("overall", {}).get(k) for k in ("J", "F", "JF", "A", "R")}
        for subset in SUBSETS:
            row[f"JF_{subset}"] = res.get(subset, {}).get("JF")
        return row
