"""Runs of settings: models × datasets × pruners × ratios, plus one no-pruning reference per model × dataset.

Every spec is parsed and validated before anything heavy loads, and every dataset is opened before the
first model loads, so a typo or a missing dataset root fails in seconds, not after a 7B model has loaded.
Results are rewritten after every dataset, so a run that dies keeps what it finished; samples.jsonl holds
every sample, and `--resume` reuses it (see resume.py). Under torchrun the samples are split by rank and
rank 0 merges them (see distributed.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from evtp_cli.bench.evaluate import (
    REFERENCE,
    FailureBudget,
    Setting,
    add_speedups,
    evaluate_dataset,
)
from evtp_cli.bench.results import (
    SAMPLES_JSONL,
    SampleLog,
    prepare_output,
    run_meta,
    write_results,
)
from evtp_cli.errors import DataError, EvtpError
from evtp_cli.spec import parse_spec


@dataclass
class RunConfig:
    models: list[str]
    datasets: list[str]
    pruners: list[str]
    ratios: list[float]
    output: Path
    limit: int | None = None
    seed: int = 0
    device: str = "cpu"
    frames: str | None = None  # key-frame policy override for video models (first-K / uniform-K)
    predict_only: bool = False  # write challenge-layout prediction zips instead of scoring
    extra_meta: dict[str, Any] = field(default_factory=dict)
    resume: bool = False  # reuse the finished samples of the same configuration in `output`
    overwrite: bool = False  # replace whatever run `output` holds
    max_failures: int | None = None  # stop (TooManyFailures) once more samples than this failed
    warmup: int = 1  # the first N samples of each dataset run once untimed before their timed run


class TooManyFailures(EvtpError):
    """More samples failed than --max-failures allows; the results of what finished are written."""

    exit_code = 3


@dataclass
class RunOutcome:
    rows: list[dict[str, Any]]  # empty on ranks other than 0
    meta: dict[str, Any]
    output: Path
    failed: dict[str, list[str]]  # dataset -> failed sample ids
    reasons: dict[str, str]  # failed sample id -> first recorded reason
    stopped: bool = False  # ended early by --max-failures
    main: bool = True  # rank 0 (or a single process): prints and owns the results
    reused: int = 0  # finished records reused from an earlier run


def canonical(spec: str) -> str:
    return str(parse_spec(spec))


def plain_options(config: Any) -> dict[str, Any]:
    """A config dataclass's options as they read back from results.json (JSON types: lists, not tuples)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def options_of(built: Any) -> dict[str, Any] | None:
    """Every option of a built pruner or dataset, defaults included (its `config` dataclass), JSON-ready."""
    config = getattr(built, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        return None
    return plain_options(config)


def parse_ratios(values: list[str] | list[float]) -> list[float]:
    ratios = []
    for value in values:
        try:
            ratio = float(value)
        except (TypeError, ValueError):
            raise EvtpError(f"ratio {value!r} is not a number; give keep ratios in (0, 1], e.g. 0.2") from None
        if not (0.0 < ratio <= 1.0) or math.isnan(ratio):
            raise EvtpError(f"ratio {value!r} is outside (0, 1]; a keep ratio is the fraction of visual tokens kept")
        ratios.append(ratio)
    return ratios


def validate(config: RunConfig, decodes_pruned: bool = True) -> None:
    """Parse every spec into its config (unknown names/keys raise SpecError with the known ones).
    `decodes_pruned=False` (token maps: encode and select only) lets a model that cannot decode pruned
    settings through (`IVSModel.cannot_prune`)."""
    from evtp_cli.data import DATASETS
    from evtp_cli.models import MODELS
    from evtp_cli.models.base import check_device
    from evtp_cli.pruners import PRUNERS

    if not config.models or not config.datasets:
        raise EvtpError("give at least one model and one dataset")
    if not config.pruners or not config.ratios:
        raise EvtpError("give at least one pruner and one keep ratio (the unpruned reference runs with them)")
    if config.frames is not None:
        from evtp_cli.api import key_frame_indices

        try:
            key_frame_indices(8, config.frames)
        except ValueError as exc:
            raise EvtpError(f"--frames: {exc}") from None
    for spec in config.models:
        model_config = MODELS.config_of(spec, **_model_overrides(spec, config.device, config.frames))
        if hasattr(model_config, "device"):
            check_device(model_config.device, allow_meta=False)  # before the output folder is touched
        cannot_prune = getattr(MODELS.load(parse_spec(spec).name), "cannot_prune", None)  # plug-ins may lack it
        why = cannot_prune(model_config) if cannot_prune and decodes_pruned else None
        if why:
            raise EvtpError(f"model {spec!r}: {why}")
    for spec in config.datasets:
        DATASETS.config_of(spec)
    for spec in config.pruners:
        PRUNERS.config_of(spec)
    for kind, values in (("model", [canonical(m) for m in config.models]), ("dataset", [canonical(d) for d in config.datasets]),
                         ("pruner", [canonical(p) for p in config.pruners]), ("keep ratio", parse_ratios(config.ratios))):
        repeated = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if repeated is not None:
            raise EvtpError(f"{kind} {repeated:g} is given twice; give each once" if kind == "keep ratio"
                            else f"{kind} {repeated!r} is given twice; give each once")
    if config.limit is not None and config.limit < 1:
        raise EvtpError(f"--limit must be >= 1, got {config.limit}")
    if config.warmup < 0:
        raise EvtpError(f"--warmup must be >= 0, got {config.warmup}")
    if config.max_failures is not None and config.max_failures < 0:
        raise EvtpError(f"--max-failures must be >= 0, got {config.max_failures}")
    if config.resume and config.overwrite:
        raise EvtpError("--resume and --overwrite exclude each other: resume keeps finished samples, overwrite deletes them")


def _model_overrides(spec: str, device: str, frames: str | None) -> dict[str, Any]:
    """Run-wide options (device, key-frame policy) for models that have them, unless the spec sets them."""
    from evtp_cli.models import MODELS

    options = parse_spec(spec).options
    fields = getattr(MODELS.load(parse_spec(spec).name).Config, "__dataclass_fields__", {})
    overrides: dict[str, Any] = {}
    if "device" not in options and "device" in fields:
        overrides["device"] = device
    if frames is not None and "frames" not in options and "frames" in fields:
        overrides["frames"] = frames
    return overrides


def _prediction_writer(out: Path, dataset: Any) -> Callable[[Setting], Any]:
    """A SubmissionWriter per setting under out/predictions/<dataset>/<model>/<pruner>@<ratio>/."""
    from evtp_cli.bench.report import slug
    from evtp_cli.data.submission import SubmissionWriter, submission_prefix

    def make(setting: Setting) -> Any:
        folder = out / "predictions" / slug(setting.dataset) / slug(setting.model) / f"{slug(setting.pruner)}@{setting.ratio:g}"
        return SubmissionWriter(folder, prefix=submission_prefix(dataset))

    return make


def open_dataset(spec: str) -> Any:
    """load_dataset, with a reader's multi-line message (path + expected layout) folded into one line;
    a dataset without samples is an error, so that a run never ends "successfully" with empty rows."""
    from evtp_cli.data import load_dataset

    try:
        dataset = load_dataset(spec)
    except DataError as exc:
        raise DataError(one_line(str(exc))) from None
    if len(dataset) == 0:
        name = spec.partition(":")[0]
        raise DataError(f"dataset {spec!r} has no samples: check its root and options "
                        f"(`evtp list {name}` shows them, e.g. the split or query filter)")
    return dataset


def one_line(message: str) -> str:
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def run(config: RunConfig, progress: Callable[[str, int], Any] | None = None, advance: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate all settings; returns the rows (also written to config.output). See `execute`."""
    outcome = execute(config, progress, advance)
    if outcome.stopped:
        raise TooManyFailures(too_many_message(outcome, config.max_failures))
    return outcome.rows


def too_many_message(outcome: RunOutcome, limit: int | None) -> str:
    n = sum(len(ids) for ids in outcome.failed.values())
    return f"stopped after {n} failed samples (--max-failures {limit}); results of what finished are in {outcome.output}"


def execute(
    config: RunConfig,
    progress: Callable[[str, int], Any] | None = None,
    advance: Callable[[], None] | None = None,
) -> RunOutcome:
    """Evaluate models × datasets × settings into config.output; resumable, shardable under torchrun.

    Order: validate specs → open datasets → check the output folder (resume / overwrite / refuse) →
    per model, per dataset: evaluate this process's samples (reusing finished ones), and on rank 0 rebuild
    the rows from every finished record and rewrite results.json/csv.
    """
    from evtp_cli.bench import resume as rs
    from evtp_cli.bench.distributed import Shard
    from evtp_cli.pruners import get_pruner

    validate(config)
    shard = Shard.from_env()
    if shard.sharded and config.predict_only:
        raise EvtpError("--predict-only runs cannot be sharded with torchrun yet; run them in one process")
    if config.resume and config.predict_only:
        raise EvtpError("--predict-only runs cannot be resumed (the zips need every mask); run again with --overwrite")
    datasets = [(spec, open_dataset(spec)) for spec in config.datasets]
    if not config.predict_only:
        for spec, dataset in datasets:
            if not getattr(dataset, "has_ground_truth", True):
                raise EvtpError(f"dataset {spec!r} has no public ground truth, so nothing can be scored; add --predict-only "
                                "to write the challenge's submission zip, or choose a split with ground truth")
    out = prepare_output(config.output)
    identity = rs.run_identity(config)
    shard.start()
    try:
        mode = rs.check_output(out, identity, resume=config.resume, overwrite=config.overwrite)
        meta = run_meta(config.seed, shard.device(config.device), config.extra_meta)
        meta.update({"config": identity, "world_size": shard.world})
        shard.barrier()  # every rank has checked the folder before rank 0 changes it
        if shard.main:
            if mode == "overwrite":
                rs.clear_output(out)
            for path in rs.sample_files(out):
                rs.repair_tail(path)
            rs.write_run_json(out, identity, meta)
        shard.barrier()
        done = rs.load_done(out) if mode == "resume" else {}
        outcome = _evaluate_all(config, shard, datasets, out, meta, done, progress, advance, get_pruner)
        shard.barrier()  # every rank has closed its sample file
        if shard.main:  # rank files of this run, or of an earlier sharded run this one resumed
            rs.merge_sample_files(out)
            add_speedups(outcome.rows)
            write_results(out, outcome.rows, _final_meta(meta, outcome))
        shard.barrier()  # other ranks end only after rank 0 wrote the results
    finally:
        shard.close()
    return outcome


def _final_meta(meta: dict[str, Any], outcome: RunOutcome) -> dict[str, Any]:
    return {
        **meta,
        "failed_samples": outcome.failed,
        "not_applicable": {f"{r['pruner']} on {r['model']}": r["not_applicable"] for r in outcome.rows if r.get("not_applicable")},
        "stopped_early": outcome.stopped,
        "end_time": None,
    }


def _evaluate_all(config, shard, datasets, out, meta, done, progress, advance, get_pruner) -> RunOutcome:
    from evtp_cli.bench import resume as rs
    from evtp_cli.models import load_model

    rows: list[dict[str, Any]] = []
    budget = FailureBudget(config.max_failures)
    reasons: dict[str, str] = {}
    pruners = [(canonical(p), get_pruner(p)) for p in config.pruners]
    # what each name meant in this run, defaults filled in, so the results stay readable after a default changes
    meta["pruner_options"] = {name: options_of(pruner) for name, pruner in pruners}
    meta["dataset_options"] = {canonical(spec): options_of(dataset) for spec, dataset in datasets}
    ratios = parse_ratios(config.ratios)
    log_path = out / (rs.rank_file(shard.rank) if shard.sharded else SAMPLES_JSONL)
    all_ranks_done = rs.DoneIndex(out) if shard.sharded and shard.main else None
    stopped = False

    def note(outcome: Any) -> None:
        if not outcome.ok and outcome.reason:
            reasons.setdefault(outcome.id, outcome.reason)
        if advance is not None:
            advance()

    with SampleLog(log_path) as log:
        for model_spec in config.models:
            model = load_model(model_spec, **_model_overrides(model_spec, shard.device(config.device), config.frames))
            model.check_pruners([pruner for _, pruner in pruners])  # a bad vision block ends the run before its first sample
            meta.setdefault("models", {})[canonical(model_spec)] = model.info()
            for dataset_spec, dataset in datasets:
                n = len(dataset) if config.limit is None else min(config.limit, len(dataset))
                settings = [(Setting(canonical(model_spec), canonical(dataset_spec), REFERENCE, 1.0), None)]
                settings += [
                    (Setting(canonical(model_spec), canonical(dataset_spec), name, ratio), pruner)
                    for name, pruner in pruners
                    for ratio in ratios
                ]
                mine = shard.indices(n)
                if progress is not None:
                    progress(f"{canonical(model_spec)} · {canonical(dataset_spec)}", len(mine) * len(settings))
                writer = _prediction_writer(out, dataset) if config.predict_only else None
                dataset_rows = evaluate_dataset(
                    model, dataset, settings, seed=config.seed, limit=config.limit, log=log, on_sample=note,
                    prediction_writer=writer, score=not config.predict_only, indices=mine, done=done, failures=budget,
                    warmup=config.warmup,
                )
                if shard.sharded:
                    shard.barrier()  # every rank's records of this dataset are written
                    if shard.main:  # rows from all ranks' records, in dataset order
                        merged = all_ranks_done.refresh()
                        for rec in merged.values():
                            if rec.get("status") == "failed" and rec.get("reason"):
                                reasons.setdefault(rec["id"], rec["reason"])
                        dataset_rows = evaluate_dataset(
                            model, dataset, settings, seed=config.seed, limit=config.limit, done=merged, replay_only=True,
                        )
                if shard.main:
                    for row in dataset_rows:
                        for sample_id in row.pop("failed_ids"):
                            budget.add(row["dataset"], sample_id)
                        rows.append(row)
                stopped = shard.any(budget.exceeded)  # the same decision on every rank
                if shard.main:
                    add_speedups(rows)
                    write_results(out, rows, _final_meta(meta, RunOutcome(rows, meta, out, budget.failed, reasons, stopped)))
                if stopped:
                    break
            del model
            if stopped:
                break
    return RunOutcome(rows, meta, out, budget.failed, reasons, stopped, shard.main, len(done))
