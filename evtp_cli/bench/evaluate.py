"""The evaluation loop: dataset → sample → model.encode → pruner.select → model.decode → metrics → rows.

One `Setting` is a model × dataset × pruner × ratio. The no-pruning reference (ratio 1.0) is
evaluated once per model × dataset and gives every row its `speedup`. Each sample's outcome is
appended to samples.jsonl as soon as it is known; a failing sample is recorded and left out of the
metrics, and the run goes on.
"""

from __future__ import annotations

import statistics
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from evtp_cli.bench.results import LATENCY_COLUMNS, SampleLog
from evtp_cli.data.base import Dataset, Sample
from evtp_cli.errors import EvtpError, PrunerNotApplicable
from evtp_cli.metrics import IoUAccumulator, JFAccumulator
from evtp_cli.metrics.timing import STAGES, StageTimer
from evtp_cli.models.base import IVSModel, PrunePlan
from evtp_cli.pruners.base import PruneContext, keep_count
from evtp_cli.pruners.stages import inner_hook

REFERENCE = "none"  # the pruner name of the unpruned reference rows


@dataclass
class Setting:
    """One evaluated configuration. Names are canonical spec strings (as rows report them)."""

    model: str
    dataset: str
    pruner: str
    ratio: float

    @property
    def key(self) -> tuple[str, str, str, float]:
        return (self.model, self.dataset, self.pruner, round(self.ratio, 6))


@dataclass
class SampleOutcome:
    id: str
    ok: bool
    metrics: dict[str, float] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)
    tokens_total: int | None = None
    tokens_kept: int | None = None
    reason: str | None = None
    tokens_equiv: float | None = None  # layer-averaged visual tokens in the LLM (SparseVLM-style count)


def sample_seed(seed: int, sample_id: str) -> int:
    """A per-sample seed for randomised pruners: stable across runs, processes and machines."""
    return zlib.crc32(f"{seed}:{sample_id}".encode()) & 0x7FFF_FFFF


def run_sample(model: IVSModel, sample: Sample, pruner: Any | None, ratio: float, seed: int) -> tuple[Any, dict[str, float], int, int]:
    """Encode, select, decode one sample. Returns (prediction, stage ms, tokens total, tokens kept).

    Pre-LLM methods select here; methods acting in the vision encoder or the LLM (`pruner.stage`
    "vision" / "llm") go to the backend as `PrunePlan.inner` (`pruners.stages`), or raise
    PrunerNotApplicable where the backend has no such hook. Tokens kept: the visual tokens the LLM
    carries after the method's pruning point (its last layer's count where the backend reports one);
    `prediction.extras["tokens_equiv"]` is the count averaged over the LLM's layers.
    """
    timer = StageTimer(str(model.device))
    tokens = model.encode(sample, timer)
    n = tokens.count
    plan = PrunePlan()
    kept = n
    if pruner is not None and ratio < 1.0:
        k = keep_count(ratio, n)
        context = tokens.context
        context.seed = sample_seed(seed, sample.id)
        stage = getattr(pruner, "stage", "pre-llm")
        if stage == "pre-llm":
            with timer.stage("select"):
                merged = pruner.select_and_merge(tokens.features, tokens.coords, k, context)
            plan = PrunePlan(
                keep=merged.indices,
                features=merged.features if pruner.merges else None,
                coords=merged.coords if pruner.merges else None,
            )
            kept = int(merged.features.shape[0])
        else:
            hook = inner_hook(pruner, k, context, tuple(model.inner_stages), model.name)
            layers = hook.layers(model.llm_layers)
            plan = PrunePlan(inner=hook, inner_stage=stage, inner_keep=k, inner_layers=layers, inner_layer=layers[0] if layers else None)
            kept = k
    prediction = model.decode(sample, tokens, plan, timer)
    per_layer = prediction.extras.get("visual_tokens_per_layer")
    if per_layer:
        kept = int(per_layer[-1]) if plan.inner is not None else kept
        prediction.extras["tokens_equiv"] = float(statistics.mean(per_layer))
    else:
        prediction.extras["tokens_equiv"] = float(kept)
    return prediction, timer.result(), n, kept


def score_sample(sample: Sample, masks: np.ndarray, iou: IoUAccumulator, jf: JFAccumulator) -> dict[str, float]:
    """Add one prediction to the task's accumulator and return its per-sample metrics."""
    if sample.masks is None:
        return {}
    if masks.shape != sample.masks.shape:
        raise ValueError(f"prediction shape {masks.shape} differs from ground truth {sample.masks.shape}")
    if sample.task == "image":
        ignore = None if sample.ignore is None else sample.ignore[0]
        out = iou.update(masks[0], sample.masks[0], ignore)
        return {"iou": out["iou"], "inter": out["inter"], "union": out["union"]}
    meta = sample.meta or {}
    expr = (meta.get("video_id"), meta.get("exp_id"), sample.id)
    voids = None if sample.ignore is None else list(sample.ignore)
    return jf.update(expr, list(masks), list(sample.masks), voids)


@dataclass
class _Accumulators:
    setting: Setting
    pruner: Any | None
    iou: IoUAccumulator = field(default_factory=IoUAccumulator)
    jf: JFAccumulator = field(default_factory=JFAccumulator)
    timings: list[dict[str, float]] = field(default_factory=list)
    tokens_total: list[int] = field(default_factory=list)
    tokens_kept: list[int] = field(default_factory=list)
    tokens_equiv: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    not_applicable: str | None = None
    writer: Any | None = None  # a SubmissionWriter when predictions are saved
    extra: Any | None = None  # a dataset's own scorer (e.g. ReVOS A/R), from `dataset.make_scorer()`


def evaluate_dataset(
    model: IVSModel,
    dataset: Dataset,
    settings: list[tuple[Setting, Any | None]],
    *,
    seed: int = 0,
    limit: int | None = None,
    log: SampleLog | None = None,
    on_sample: Callable[[SampleOutcome], None] | None = None,
    warmup: int = 1,
    prediction_writer: Callable[[Setting], Any] | None = None,
    score: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate several settings of one model on one dataset; returns one row per setting.

    Settings are interleaved sample by sample: each sample is loaded once and run under every setting
    in turn, so slow drifts of the machine (other load, thermal state) hit all settings alike and the
    speed-ups compare like with like. The first `warmup` samples are run once untimed first.
    With `prediction_writer`, each setting's masks are also written in the challenge layout (a
    `SubmissionWriter` per setting) and zipped; with `score=False` nothing is scored (predict-only).
    """
    n = len(dataset) if limit is None else min(limit, len(dataset))
    accs = [_Accumulators(setting, pruner) for setting, pruner in settings]
    if score and hasattr(dataset, "make_scorer"):
        for acc in accs:
            acc.extra = dataset.make_scorer()
    if prediction_writer is not None:
        for acc in accs:
            acc.writer = prediction_writer(acc.setting)
    for index in range(n):
        sample_id = f"#{index}"
        try:
            sample = dataset[index]
            sample_id = sample.id
        except EvtpError:
            raise
        except Exception as exc:  # an unreadable sample fails under every setting
            sample, load_error = None, f"{type(exc).__name__}: {exc}"
        for acc in accs:
            if acc.not_applicable is not None:
                continue
            if sample is None:
                outcome = SampleOutcome(sample_id, False, reason=load_error)
            else:
                outcome = _evaluate_one(model, sample, acc, seed, warm=index < warmup, score=score)
                if outcome is None:  # the pruner cannot run on this backend
                    continue
            if not outcome.ok:
                acc.failed.append(sample_id)
            if log is not None:
                log.write(_record(acc.setting, dataset, outcome))
            if on_sample is not None:
                on_sample(outcome)
    rows = []
    for acc in accs:
        row = _row(acc.setting, dataset, acc.iou, acc.jf, acc.timings, acc.tokens_total, acc.tokens_kept, acc.failed, acc.tokens_equiv)
        if acc.not_applicable is not None:
            row["not_applicable"] = acc.not_applicable
        if acc.extra is not None and acc.timings:
            row.update(acc.extra.compute())
        if acc.writer is not None and acc.writer.count:
            row["predictions_zip"] = str(acc.writer.finish())
        if acc.tokens_kept and model.prefill_flops(1) is not None:
            row["gflops_prefill"] = model.prefill_flops(int(round(statistics.mean(acc.tokens_equiv or acc.tokens_kept))) + TEXT_TOKENS) / 1e9
        rows.append(row)
    return rows


TEXT_TOKENS = 12  # a typical instruction length, for the analytic prefill FLOPs


def _evaluate_one(model: IVSModel, sample: Sample, acc: _Accumulators, seed: int, warm: bool, score: bool = True) -> SampleOutcome | None:
    try:
        if warm:  # the first call pays lazy initialisation; not timed
            run_sample(model, sample, acc.pruner, acc.setting.ratio, seed)
        prediction, ms, total, kept = run_sample(model, sample, acc.pruner, acc.setting.ratio, seed)
        metrics = score_sample(sample, prediction.masks, acc.iou, acc.jf) if score else {}
        if acc.extra is not None and sample.masks is not None:
            metrics.update(acc.extra.update(sample, prediction.masks))
        if acc.writer is not None:
            meta = sample.meta or {}
            names = meta.get("frame_names") or [f"{i:05d}" for i in range(len(prediction.masks))]
            acc.writer.add(str(meta.get("video_id") or sample.id), str(meta.get("exp_id") or "0"), names, prediction.masks)
    except PrunerNotApplicable as exc:
        acc.not_applicable = str(exc)
        return None
    except EvtpError:
        raise
    except Exception as exc:  # one failed sample never costs the run
        return SampleOutcome(sample.id, False, reason=f"{type(exc).__name__}: {exc}".strip())
    acc.timings.append(ms)
    acc.tokens_total.append(total)
    acc.tokens_kept.append(kept)
    equiv = float(prediction.extras.get("tokens_equiv", kept))
    acc.tokens_equiv.append(equiv)
    return SampleOutcome(sample.id, True, metrics, ms, total, kept, tokens_equiv=equiv)


def _record(setting: Setting, dataset: Dataset, outcome: SampleOutcome) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "model": setting.model,
        "dataset": setting.dataset,
        "pruner": setting.pruner,
        "ratio": setting.ratio,
        "id": outcome.id,
        "status": "ok" if outcome.ok else "failed",
    }
    if outcome.ok:
        rec.update(outcome.metrics)
        rec.update({f"ms_{k}": v for k, v in outcome.ms.items()})
        rec["tokens_total"] = outcome.tokens_total
        rec["tokens_kept"] = outcome.tokens_kept
        rec["tokens_equiv"] = outcome.tokens_equiv
    else:
        rec["reason"] = outcome.reason
    return rec


def _median(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(statistics.median(values)) if values else None


def _row(setting, dataset, iou, jf, timings, tokens_total, tokens_kept, failed, tokens_equiv=None) -> dict[str, Any]:
    task = dataset.task
    row: dict[str, Any] = {
        "model": setting.model,
        "dataset": setting.dataset,
        "split": getattr(dataset, "split", None),
        "task": task,
        "pruner": setting.pruner,
        "ratio": setting.ratio,
        "n_samples": len(timings),
        "n_failed": len(failed),
        "tokens_total": float(np.mean(tokens_total)) if tokens_total else None,
        "tokens_kept": float(np.mean(tokens_kept)) if tokens_kept else None,
        "tokens_equiv": float(np.mean(tokens_equiv)) if tokens_equiv else (float(np.mean(tokens_kept)) if tokens_kept else None),
    }
    if task == "image":
        row.update(iou.compute() if iou.n else {"giou": None, "ciou": None})
        row.update({"J": None, "F": None, "JF": None})
    else:
        row.update({"giou": None, "ciou": None})
        row.update(jf.compute() if jf.per_expr else {"J": None, "F": None, "JF": None})
    for stage in STAGES:
        row[f"ms_{stage}"] = _median(t[stage] for t in timings)
    row["ms_total"] = _median(t["total"] for t in timings)
    row["failed_ids"] = failed
    return row


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """speedup = ms_total of the same model/dataset's reference (ratio 1.0, no pruning) / ms_total."""
    refs = {(r["model"], r["dataset"]): r.get("ms_total") for r in rows if r["pruner"] == REFERENCE}
    for r in rows:
        ref = refs.get((r["model"], r["dataset"]))
        r["speedup"] = ref / r["ms_total"] if ref and r.get("ms_total") else None
        ref_prefill = next(
            (x.get("ms_prefill") for x in rows if x["pruner"] == REFERENCE and (x["model"], x["dataset"]) == (r["model"], r["dataset"])),
            None,
        )
        r["speedup_prefill"] = ref_prefill / r["ms_prefill"] if ref_prefill and r.get("ms_prefill") else None


__all__ = ["LATENCY_COLUMNS", "REFERENCE", "Setting", "add_speedups", "evaluate_dataset", "run_sample", "sample_seed"]
