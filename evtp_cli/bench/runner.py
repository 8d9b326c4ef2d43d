"""Runs of settings: models × datasets × pruners × ratios, plus one no-pruning reference per model × dataset.

Every spec is parsed and validated before anything heavy loads, so a typo fails in a second, not after
the first model has loaded. Results are rewritten after every setting, so a run that dies keeps what it
finished; samples.jsonl holds every sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from evtp_cli.bench.evaluate import REFERENCE, Setting, add_speedups, evaluate_dataset
from evtp_cli.bench.results import SAMPLES_JSONL, SampleLog, prepare_output, run_meta, write_results
from evtp_cli.errors import EvtpError
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


def canonical(spec: str) -> str:
    return str(parse_spec(spec))


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


def validate(config: RunConfig) -> None:
    """Parse every spec into its config (unknown names/keys raise SpecError with the known ones)."""
    from evtp_cli.data import DATASETS
    from evtp_cli.models import MODELS
    from evtp_cli.pruners import PRUNERS

    if not config.models or not config.datasets:
        raise EvtpError("give at least one model and one dataset")
    if config.frames is not None:
        from evtp_cli.data.frames import key_frame_indices

        try:
            key_frame_indices(8, config.frames)
        except ValueError as exc:
            raise EvtpError(f"--frames: {exc}") from None
    for spec in config.models:
        MODELS.config_of(spec, **_model_overrides(spec, config.device, config.frames))
    for spec in config.datasets:
        DATASETS.config_of(spec)
    for spec in config.pruners:
        PRUNERS.config_of(spec)
    parse_ratios(config.ratios)
    if config.limit is not None and config.limit < 1:
        raise EvtpError(f"--limit must be >= 1, got {config.limit}")


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


def run(config: RunConfig, progress: Callable[[str, int], Any] | None = None, advance: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate all settings; returns the rows (also written to config.output)."""
    from evtp_cli.data import load_dataset
    from evtp_cli.pruners import get_pruner

    validate(config)
    out = prepare_output(config.output)
    meta = run_meta(config.seed, config.device, config.extra_meta)
    rows: list[dict[str, Any]] = []
    failed: dict[str, list[str]] = {}
    not_applicable: dict[str, str] = {}
    pruners = [(canonical(p), get_pruner(p)) for p in config.pruners]
    ratios = parse_ratios(config.ratios)
    with SampleLog(out / SAMPLES_JSONL) as log:
        for model_spec in config.models:
            from evtp_cli.models import load_model

            model = load_model(model_spec, **_model_overrides(model_spec, config.device, config.frames))
            meta.setdefault("models", {})[canonical(model_spec)] = model.info()
            for dataset_spec in config.datasets:
                dataset = load_dataset(dataset_spec)
                n = len(dataset) if config.limit is None else min(config.limit, len(dataset))
                settings = [(Setting(canonical(model_spec), canonical(dataset_spec), REFERENCE, 1.0), None)]
                settings += [
                    (Setting(canonical(model_spec), canonical(dataset_spec), name, ratio), pruner)
                    for name, pruner in pruners
                    for ratio in ratios
                ]
                if progress is not None:
                    progress(f"{canonical(model_spec)} · {canonical(dataset_spec)}", n * len(settings))
                writer = None
                if config.predict_only:
                    writer = _prediction_writer(out, dataset)
                dataset_rows = evaluate_dataset(
                    model, dataset, settings, seed=config.seed, limit=config.limit, log=log,
                    on_sample=(lambda _o: advance()) if advance is not None else None,
                    prediction_writer=writer, score=not config.predict_only,
                )
                for row in dataset_rows:
                    ids = row.pop("failed_ids")
                    label = f"{row['dataset']} · {row['pruner']} @ {row['ratio']:g}"
                    if ids:
                        failed[label] = ids
                    if row.get("not_applicable"):
                        not_applicable[f"{row['pruner']} on {row['model']}"] = row["not_applicable"]
                    rows.append(row)
                add_speedups(rows)
                meta.update({"failed_samples": failed, "not_applicable": not_applicable})
                write_results(out, rows, {**meta, "end_time": None})
    meta.update({"failed_samples": failed, "not_applicable": not_applicable, "end_time": None})
    add_speedups(rows)
    write_results(out, rows, meta)
    return rows
