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
import torch

from evtp_cli.api import Merged, PrunePlan, Sample, inner_hook, keep_count
from evtp_cli.bench.results import LATENCY_COLUMNS, SampleLog
from evtp_cli.data.base import Dataset
from evtp_cli.errors import EvtpError, PrunerNotApplicable
from evtp_cli.metrics import IoUAccumulator, JFAccumulator
from evtp_cli.metrics.timing import STAGES, StageTimer
from evtp_cli.models.base import IVSModel

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
    mem_peak_mb: float | None = None  # CUDA peak allocated memory of the sample (None on the CPU)
    gflops_prefill: float | None = None  # analytic prefill GFLOPs of the sample (None where the model has no formula)


def sample_seed(seed: int, sample_id: str) -> int:
    """A per-sample seed for randomised pruners: stable across runs, processes and machines."""
    return zlib.crc32(f"{seed}:{sample_id}".encode()) & 0x7FFF_FFFF


def select_pre_llm(pruner: Any, tokens: Any, ratio: float, seed: int, sample_id: str) -> Merged:
    """What a pre-LLM pruner keeps of one encoded sample, chosen exactly as an evaluation run chooses it
    (budget from the ratio, the per-sample seed). Used by runs, `evtp coverage` and `evtp visualize`."""
    context = tokens.context
    context.seed = sample_seed(seed, sample_id)
    return pruner.select_and_merge(tokens.features, tokens.coords, keep_count(ratio, tokens.count), context)


def run_sample(model: IVSModel, sample: Sample, pruner: Any | None, ratio: float, seed: int) -> tuple[Any, dict[str, float], int, int]:
    """Encode, select, decode one sample. Returns (prediction, stage ms, tokens total, tokens kept).

    Pre-LLM methods select here; methods acting in the vision encoder or the LLM (`pruner.stage`
    "vision" / "llm") go to the backend as `PrunePlan.inner` (`pruners.stages`), or raise
    PrunerNotApplicable where the backend has no such hook. Tokens kept: the visual tokens the LLM
    carries after the method's pruning point (its last layer's count where the backend reports one);
    `prediction.extras["tokens_equiv"]` is the count averaged over the LLM's layers.

    Also: stage ms["ttft"] = vision + select + prefill + the decode stage's share until the first
    generated token (`decode_first` where the backend times it, else the whole decode stage, as in
    tiny-ivs whose one decode step is its first token); extras "mem_peak_mb" (CUDA: peak allocated
    memory of this sample, the peak statistics reset at its start; None on the CPU) and
    "gflops_prefill" (`model.prefill_flops` summed over the LLM's layers, layer l's share at its own
    length: visual tokens it carried + the prompt's text tokens, `extras["text_tokens"]` or TEXT_TOKENS).
    """
    cuda = torch.device(model.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(model.device)
    timer = StageTimer(str(model.device))
    tokens = model.encode(sample, timer)
    n = tokens.count
    plan = PrunePlan()
    kept = n
    if pruner is not None and ratio < 1.0:
        stage = getattr(pruner, "stage", "pre-llm")
        if stage == "pre-llm":
            with timer.stage("select"):
                merged = select_pre_llm(pruner, tokens, ratio, seed, sample.id)
            plan = PrunePlan(
                keep=merged.indices,
                features=merged.features if pruner.merges else None,
                coords=merged.coords if pruner.merges else None,
            )
            kept = int(merged.features.shape[0])
        else:
            k = keep_count(ratio, n)
            context = tokens.context
            context.seed = sample_seed(seed, sample.id)
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
    ms = timer.result()
    first = ms.get("decode_first", ms["decode"])
    ms["ttft"] = ms["vision"] + ms["select"] + ms["prefill"] + first
    prediction.extras["mem_peak_mb"] = torch.cuda.max_memory_allocated(model.device) / 2**20 if cuda else None
    prediction.extras["gflops_prefill"] = prefill_gflops(model, per_layer or [kept], prediction.extras.get("text_tokens", TEXT_TOKENS))
    return prediction, ms, n, kept


def prefill_gflops(model: IVSModel, per_layer: list[int], text_tokens: int) -> float | None:
    """Analytic prefill GFLOPs with layer l at its own length (per_layer[l] visual + text tokens).

    `model.prefill_flops(S)` counts all layers at length S and is linear in the depth, so one layer's
    share is prefill_flops(S) / depth; a single count stands for every layer.
    """
    if model.prefill_flops(1) is None:
        return None
    return sum(model.prefill_flops(int(c) + int(text_tokens)) for c in per_layer) / len(per_layer) / 1e9


def check_ground_truth(sample: Sample) -> None:
    """The sample contract's masks: bool [T, H, W], one per frame. A reader that breaks it is named as the
    cause, before the model runs, rather than as a prediction that does not match."""
    if sample.masks is not None and (sample.masks.ndim != 3 or sample.masks.shape[0] != sample.num_frames):
        raise ValueError(f"the dataset's ground truth has shape {sample.masks.shape}; the sample contract wants "
                         f"bool [T, H, W] with T = {sample.num_frames} frames")


def score_sample(sample: Sample, masks: np.ndarray, iou: IoUAccumulator, jf: JFAccumulator) -> dict[str, float]:
    """Add one prediction to the task's accumulator and return its per-sample metrics."""
    if sample.masks is None:
        return {}
    check_ground_truth(sample)
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
class FailureBudget:
    """Failed samples of a run, by dataset; `exceeded` once more than `limit` failed (None: no limit)."""

    limit: int | None = None
    failed: dict[str, list[str]] = field(default_factory=dict)
    _seen: set[tuple[str, str]] = field(default_factory=set, repr=False)  # a sample fails once, whatever its settings

    def add(self, dataset: str, sample_id: str) -> None:
        if (dataset, sample_id) not in self._seen:
            self._seen.add((dataset, sample_id))
            self.failed.setdefault(dataset, []).append(sample_id)

    @property
    def count(self) -> int:
        return sum(len(ids) for ids in self.failed.values())

    @property
    def exceeded(self) -> bool:
        return self.limit is not None and self.count > self.limit


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
    mem_peak_mb: list[float | None] = field(default_factory=list)
    gflops_prefill: list[float | None] = field(default_factory=list)
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
    indices: Iterable[int] | None = None,
    done: dict[tuple, dict[str, Any]] | None = None,
    replay_only: bool = False,
    failures: "FailureBudget | None" = None,
) -> list[dict[str, Any]]:
    """Evaluate several settings of one model on one dataset; returns one row per setting.

    Settings are interleaved sample by sample: each sample is loaded once and run under every setting
    in turn, so slow drifts of the machine (other load, thermal state) hit all settings alike and the
    speed-ups compare like with like. The first `warmup` samples are run once untimed first.
    With `prediction_writer`, each setting's masks are also written in the challenge layout (a
    `SubmissionWriter` per setting) and zipped; with `score=False` nothing is scored (predict-only).

    Resume and sharding: `indices` limits the loop to some sample indices (a rank's share under
    torchrun); `done` maps `record_key(setting, index)` to a finished record of samples.jsonl, which is
    replayed into the accumulators instead of being evaluated again (a sample whose settings are all
    done is not even loaded); `replay_only` skips what is not done (rank 0 merging the shards). Replayed
    and evaluated samples feed the accumulators with the same numbers in the same (dataset) order, so
    the rows are the same as those of one uninterrupted process. `failures` counts failed samples; the
    loop stops after the sample that exceeds its limit.
    """
    n = len(dataset) if limit is None else min(limit, len(dataset))
    accs = [_Accumulators(setting, pruner) for setting, pruner in settings]
    if score and hasattr(dataset, "make_scorer"):
        for acc in accs:
            acc.extra = dataset.make_scorer()
    if prediction_writer is not None:
        for acc in accs:
            acc.writer = prediction_writer(acc.setting)
    done = done or {}
    order = range(n) if indices is None else sorted(i for i in set(indices) if 0 <= i < n)
    evaluated = 0  # samples run live in this call (the first `warmup` of them are warmed up)
    for index in order:
        records = {id(acc): done.get(record_key(acc.setting, index)) for acc in accs}
        pending = [acc for acc in accs if acc.not_applicable is None and records[id(acc)] is None]
        if replay_only and pending:
            continue
        known = next((r["id"] for r in records.values() if r is not None), None)
        sample_id, sample, load_error = known or f"#{index}", None, None
        if pending:
            try:
                sample = dataset[index]
                sample_id = sample.id
            except EvtpError:
                raise
            except Exception as exc:  # an unreadable sample fails under every setting
                load_error = f"{type(exc).__name__}: {exc}"
            if known is not None and sample is not None and known != sample.id:
                raise EvtpError(
                    f"sample {index} of {dataset_label(accs)} is {sample.id!r} but samples.jsonl recorded {known!r}: "
                    "the dataset changed since the run started; use --overwrite (or another --output) to start again"
                )
        sample_failed = False
        for acc in accs:
            if acc.not_applicable is not None:
                continue
            record = records[id(acc)]
            if record is not None:
                outcome = _replay(acc, record)
            elif sample is None:
                outcome = SampleOutcome(sample_id, False, reason=load_error)
            else:
                outcome = _evaluate_one(model, sample, acc, seed, warm=evaluated < warmup, score=score)
                if outcome is None and log is not None:  # the pruner cannot run on this backend: remembered
                    log.write(_not_applicable_record(acc.setting, index, sample_id, acc.not_applicable))
            if outcome is None:
                continue
            if not outcome.ok:
                acc.failed.append(sample_id)
                sample_failed = True
            if record is None and log is not None:
                log.write(_record(acc.setting, dataset, outcome, index))
            if on_sample is not None:
                on_sample(outcome)
        if sample is not None:
            evaluated += 1
        if failures is not None:
            if sample_failed:
                failures.add(dataset_label(accs), sample_id)
            if failures.exceeded:
                break
    rows = []
    for acc in accs:
        row = _row(
            acc.setting, dataset, acc.iou, acc.jf, acc.timings, acc.tokens_total, acc.tokens_kept, acc.failed, acc.tokens_equiv,
            acc.mem_peak_mb, acc.gflops_prefill,
        )  # fmt: skip
        if acc.not_applicable is not None:
            row["not_applicable"] = acc.not_applicable
        if acc.extra is not None and acc.timings:
            row.update(acc.extra.compute())
        if acc.writer is not None and acc.writer.count:
            row["predictions_zip"] = str(acc.writer.finish())
        rows.append(row)
    return rows


TEXT_TOKENS = 12  # a typical instruction length, for the analytic prefill FLOPs


def _evaluate_one(model: IVSModel, sample: Sample, acc: _Accumulators, seed: int, warm: bool, score: bool = True) -> SampleOutcome | None:
    try:
        if score:
            check_ground_truth(sample)
        if warm:  # the first call pays lazy initialisation; not timed
            run_sample(model, sample, acc.pruner, acc.setting.ratio, seed)
        prediction, ms, total, kept = run_sample(model, sample, acc.pruner, acc.setting.ratio, seed)
        metrics = score_sample(sample, prediction.masks, acc.iou, acc.jf) if score else {}
        if acc.extra is not None and sample.masks is not None:
            metrics.update(acc.extra.update(sample, prediction.masks))
        if metrics:
            metrics.update(_replay_fields(sample))
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
    mem, gflops = prediction.extras.get("mem_peak_mb"), prediction.extras.get("gflops_prefill")
    acc.mem_peak_mb.append(mem)
    acc.gflops_prefill.append(gflops)
    return SampleOutcome(sample.id, True, metrics, ms, total, kept, tokens_equiv=equiv, mem_peak_mb=mem, gflops_prefill=gflops)


def _record(setting: Setting, dataset: Dataset, outcome: SampleOutcome, index: int | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "model": setting.model,
        "dataset": setting.dataset,
        "pruner": setting.pruner,
        "ratio": setting.ratio,
        "index": index,
        "id": outcome.id,
        "status": "ok" if outcome.ok else "failed",
    }
    if outcome.ok:
        rec.update(outcome.metrics)
        rec.update({f"ms_{k}": v for k, v in outcome.ms.items()})
        rec["tokens_total"] = outcome.tokens_total
        rec["tokens_kept"] = outcome.tokens_kept
        rec["tokens_equiv"] = outcome.tokens_equiv
        rec["mem_peak_mb"] = outcome.mem_peak_mb
        rec["gflops_prefill"] = outcome.gflops_prefill
    else:
        rec["reason"] = outcome.reason
    return rec


def _not_applicable_record(setting: Setting, index: int, sample_id: str, reason: str | None) -> dict[str, Any]:
    return {
        "model": setting.model, "dataset": setting.dataset, "pruner": setting.pruner, "ratio": setting.ratio,
        "index": index, "id": sample_id, "status": "not_applicable", "reason": reason,
    }


def record_key(setting: Setting | dict[str, Any], index: int) -> tuple:
    """The identity of one finished sample of one setting: (model, dataset, pruner, ratio, sample index)."""
    if isinstance(setting, dict):
        setting = Setting(setting["model"], setting["dataset"], setting["pruner"], float(setting["ratio"]))
    return (*setting.key, int(index))


def dataset_label(accs: list[_Accumulators]) -> str:
    return accs[0].setting.dataset if accs else ""


def _replay_fields(sample: Sample) -> dict[str, Any]:
    """What a record needs beyond its metrics to be replayed exactly (frame count, ReVOS subset)."""
    fields: dict[str, Any] = {}
    if sample.task == "video" and sample.masks is not None:
        fields["frames"] = int(len(sample.masks))
    subset = (sample.meta or {}).get("subset")
    if subset is not None:
        fields["subset"] = subset
    return fields


def _replay(acc: _Accumulators, rec: dict[str, Any]) -> SampleOutcome | None:
    """Feed a finished record into the accumulators exactly as evaluating its sample did."""
    status = rec.get("status")
    if status == "not_applicable":
        acc.not_applicable = rec.get("reason") or "not applicable"
        return None
    if status != "ok":
        return SampleOutcome(rec["id"], False, reason=rec.get("reason"))
    metrics = {k: rec[k] for k in ("iou", "inter", "union", "J", "F", "JF", "A", "R") if rec.get(k) is not None}
    if "iou" in metrics:  # IoUAccumulator.update, from the recorded numbers
        acc.iou.sum_iou += metrics["iou"]
        acc.iou.n += 1
        acc.iou.sum_inter += metrics["inter"]
        acc.iou.sum_union += metrics["union"]
    elif "J" in metrics:  # one expression per sample: its J and F are sum/frames, as compute() divides
        acc.jf.per_expr[("replayed", rec["id"])] = [metrics["J"], metrics["F"], 1]
    if acc.extra is not None and metrics:
        _replay_extra(acc.extra, rec)
    ms = {k[3:]: float(v) for k, v in rec.items() if k.startswith("ms_") and v is not None}
    acc.timings.append(ms)
    acc.tokens_total.append(rec.get("tokens_total"))
    acc.tokens_kept.append(rec.get("tokens_kept"))
    equiv = rec.get("tokens_equiv", rec.get("tokens_kept"))
    acc.tokens_equiv.append(equiv)
    mem, gflops = rec.get("mem_peak_mb"), rec.get("gflops_prefill")
    acc.mem_peak_mb.append(mem)
    acc.gflops_prefill.append(gflops)
    return SampleOutcome(
        rec["id"], True, metrics, ms, rec.get("tokens_total"), rec.get("tokens_kept"), tokens_equiv=equiv, mem_peak_mb=mem, gflops_prefill=gflops
    )


def _replay_extra(extra: Any, rec: dict[str, Any]) -> None:
    """A dataset scorer's state from a record, through the scorer's own `replay(rec)`."""
    if not getattr(extra, "replay", lambda rec: False)(rec):
        raise EvtpError(
            f"cannot reuse the finished samples of this dataset ({type(extra).__name__} keeps state samples.jsonl "
            "does not record); run without --resume, or with --overwrite"
        )


def _median(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(statistics.median(values)) if values else None


def _row(setting, dataset, iou, jf, timings, tokens_total, tokens_kept, failed, tokens_equiv=None, mem_peak_mb=None, gflops_prefill=None) -> dict[str, Any]:
    """One result row. Latencies (and ttft_ms) are medians over samples; mem_peak_mb is the largest
    sample peak (the memory the setting needs); gflops_prefill the mean over samples (None where unknown)."""
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
    row["ttft_ms"] = _median(t["ttft"] for t in timings if t.get("ttft") is not None)
    mems = [m for m in (mem_peak_mb or []) if m is not None]
    row["mem_peak_mb"] = float(max(mems)) if mems else None
    flops = [g for g in (gflops_prefill or []) if g is not None]
    row["gflops_prefill"] = float(np.mean(flops)) if flops else None
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


__all__ = [
    "LATENCY_COLUMNS", "REFERENCE", "FailureBudget", "Setting", "add_speedups", "evaluate_dataset", "record_key",
    "run_sample", "sample_seed", "select_pre_llm",
]
