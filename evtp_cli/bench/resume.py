"""An output folder's own run: which configuration wrote it, what it finished, and resuming it.

`run.json` holds the run's identity (models, datasets, pruners, ratios, limit, seed, frame policy,
predict-only), written before the first sample, so even a run killed in its first minute can be resumed
and is never silently overwritten by a different configuration. Finished samples are the records of
`samples.jsonl` (and of `samples.rank{r}.jsonl` while a torchrun run is unmerged), keyed by
`record_key`: (model, dataset, pruner, ratio, sample index).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from evtp_cli.bench.evaluate import record_key
from evtp_cli.bench.results import (
    RESULTS_CSV,
    RESULTS_JSON,
    SAMPLES_JSONL,
    SampleLog,
    now_iso,
)
from evtp_cli.errors import EvtpError

RUN_JSON = "run.json"
RANK_PATTERN = "samples.rank*.jsonl"
IDENTITY_KEYS = ("models", "datasets", "pruners", "ratios", "limit", "seed", "frames", "predict_only")
# what --overwrite removes besides the files above: outputs the evaluation commands and `evtp report` write
# files other commands derive from a run (sweep table, report, coverage), deleted with it by --overwrite
DERIVED = ("table.md", "report.md", "accuracy_vs_ratio_*.png", "accuracy_vs_latency_*.png",
           "coverage.csv", "coverage_summary.csv", "coverage.md", "coverage_*.png")


def rank_file(rank: int) -> str:
    return f"samples.rank{rank}.jsonl"


def run_identity(config: Any) -> dict[str, Any]:
    """What makes two runs the same run (JSON-normalised). Device and output folder are not part of it."""
    from evtp_cli.bench.runner import canonical, parse_ratios

    identity = {
        "models": [canonical(m) for m in config.models],
        "datasets": [canonical(d) for d in config.datasets],
        "pruners": [canonical(p) for p in config.pruners],
        "ratios": [round(r, 6) for r in parse_ratios(config.ratios)],
        "limit": config.limit,
        "seed": config.seed,
        "frames": config.frames,
        "predict_only": bool(config.predict_only),
    }
    return json.loads(json.dumps(identity))


def sample_files(out: Path) -> list[Path]:
    """samples.jsonl first, then any per-rank files of a sharded run, in rank order."""
    ranks = sorted(out.glob(RANK_PATTERN), key=lambda p: (len(p.name), p.name))
    main = out / SAMPLES_JSONL
    return ([main] if main.exists() else []) + ranks


def _has_run(out: Path) -> bool:
    """Results or finished samples: a run.json alone (a run that failed before its first sample) holds nothing to lose."""
    if (out / RESULTS_JSON).exists():
        return True
    return any(p.stat().st_size > 0 for p in sample_files(out))


def previous_identity(out: Path) -> dict[str, Any] | None:
    """The identity recorded by the run that wrote `out` (run.json, else results.json's meta), if any."""
    for name, pick in ((RUN_JSON, lambda d: d.get("config")), (RESULTS_JSON, lambda d: d.get("meta", {}).get("config"))):
        path = out / name
        if not path.is_file():
            continue
        try:
            found = pick(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue
        if isinstance(found, dict):
            return found
    return None


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    parts = []
    for key in IDENTITY_KEYS:
        if old.get(key) != new.get(key):
            parts.append(f"{key} {_show(old.get(key))} → {_show(new.get(key))}")
    return "; ".join(parts) or "unknown difference"


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "(none)"
    return str(value)


def check_output(out: Path, identity: dict[str, Any], *, resume: bool, overwrite: bool) -> str:
    """Decide what to do with `out`: "fresh", "resume" or "overwrite". Raises EvtpError on a conflict.

    A folder holding a run is never written without --resume (same configuration only) or --overwrite.
    """
    if resume and overwrite:
        raise EvtpError("--resume and --overwrite exclude each other: resume keeps finished samples, overwrite deletes them")
    if not _has_run(out):
        return "fresh"
    if overwrite:
        return "overwrite"
    old = previous_identity(out)
    if old is None:
        raise EvtpError(
            f"{out} holds evtp results without a recorded configuration (run.json); "
            "pass --overwrite to replace them, or choose another --output"
        )
    if old != identity:
        raise EvtpError(
            f"{out} holds results of a different configuration ({_difference(old, identity)}); "
            "choose another --output, or pass --overwrite to replace them"
        )
    if not resume:
        raise EvtpError(
            f"{out} already holds results of this configuration; pass --resume to finish it (finished samples "
            "are reused) or --overwrite to start again"
        )
    return "resume"


def clear_output(out: Path) -> None:
    """Remove what an earlier run wrote into `out` (only evtp's own files)."""
    for path in [out / RUN_JSON, out / RESULTS_JSON, out / RESULTS_CSV, *sample_files(out)]:
        path.unlink(missing_ok=True)
    for pattern in DERIVED:
        for path in out.glob(pattern):
            path.unlink(missing_ok=True)
    if (out / "predictions").is_dir():
        shutil.rmtree(out / "predictions")


def repair_tail(path: Path) -> None:
    """Cut a torn last line (a run killed mid-write) so that new records start on a line of their own."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        data = path.read_bytes()
        fh.truncate(data.rfind(b"\n") + 1)


def write_run_json(out: Path, identity: dict[str, Any], meta: dict[str, Any]) -> None:
    info = {
        "config": identity,
        "evtp_version": meta.get("evtp_version"),
        "command": meta.get("command"),
        "created": now_iso(),
    }
    tmp = out / (RUN_JSON + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, out / RUN_JSON)


def read_records(out: Path) -> list[dict[str, Any]]:
    """Every record of the folder's sample files (samples.jsonl, then rank files)."""
    records: list[dict[str, Any]] = []
    for path in sample_files(out):
        records.extend(SampleLog.read(path))
    return records


def load_done(out: Path) -> dict[tuple, dict[str, Any]]:
    """Finished records by `record_key`. A key recorded twice keeps its latest record."""
    return DoneIndex(out).refresh()


def done_fingerprint(done: dict[tuple, dict[str, Any]]) -> str:
    """Names a set of finished records (which sample × setting, and whether it failed): an analysis made
    from one set is stale once the run's set differs."""
    items = sorted((repr(key), str(record.get("status"))) for key, record in done.items())
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


class DoneIndex:
    """`load_done` kept up to date: each `refresh()` parses only the lines appended since the last one.

    Rank 0 of a torchrun run rebuilds the rows after every dataset; re-reading every sample file each
    time would cost datasets × records. A last line still without its newline waits for the next refresh.
    """

    def __init__(self, out: Path):
        self.out = out
        self.done: dict[tuple, dict[str, Any]] = {}
        self._read_to: dict[Path, int] = {}

    def refresh(self) -> dict[tuple, dict[str, Any]]:
        for path in sample_files(self.out):
            start = self._read_to.get(path, 0)
            with open(path, "rb") as fh:
                fh.seek(start)
                data = fh.read()
            complete = data.rfind(b"\n") + 1
            for line in data[:complete].splitlines():
                self._add(line)
            self._read_to[path] = start + complete
        return self.done

    def _add(self, line: bytes) -> None:
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return
        if not isinstance(rec, dict) or rec.get("index") is None or not {"model", "dataset", "pruner", "ratio", "id"} <= rec.keys():
            return  # records of an older evtp (no sample index) are not reused
        self.done[record_key(rec, rec["index"])] = rec


def merge_sample_files(out: Path) -> int:
    """Fold the per-rank files of a torchrun run into samples.jsonl (one record per key, samples.jsonl's
    records first, then by setting and sample index) and delete them. Returns the number of records."""
    ranks = [p for p in sample_files(out) if p.name != SAMPLES_JSONL]
    if not ranks:
        return 0
    main = out / SAMPLES_JSONL
    merged: dict[tuple, dict[str, Any]] = {}
    for rec in SampleLog.read(main):
        merged[_merge_key(rec)] = rec
    new: dict[tuple, dict[str, Any]] = {}
    for path in ranks:
        for rec in SampleLog.read(path):
            key = _merge_key(rec)
            if key not in merged:
                new[key] = rec
    ordered = list(merged.values()) + [new[k] for k in sorted(new)]
    tmp = out / (SAMPLES_JSONL + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in ordered:
            fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
    os.replace(tmp, main)
    for path in ranks:
        path.unlink(missing_ok=True)
    return len(ordered)


def _merge_key(rec: dict[str, Any]) -> tuple:
    index = rec.get("index")
    return (str(rec.get("model")), str(rec.get("dataset")), str(rec.get("pruner")), round(float(rec.get("ratio") or 0.0), 6),
            -1 if index is None else int(index), "" if index is not None else str(rec.get("id")))
