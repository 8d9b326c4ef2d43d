"""Result files (docs/reports.md, "What a run folder holds"): results.json, results.csv and samples.jsonl.

`samples.jsonl` is appended and flushed one record at a time, so a run that dies loses nothing it
finished; `results.json` / `results.csv` are written whole at the end (atomically via a temporary file).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

from evtp_cli import __version__
from evtp_cli.errors import EvtpError

METRIC_COLUMNS = ("giou", "ciou", "J", "F", "JF", "A", "R")  # A, R: ReVOS only
LATENCY_COLUMNS = ("ms_vision", "ms_select", "ms_prefill", "ms_decode", "ms_mask", "ms_total")
# after `speedup` (docs/performance.md, "What each latency figure includes"): time to the first generated
# token (median ms), CUDA peak memory (MB, null on the CPU), analytic prefill GFLOPs, the prefill-only
# speed-up against the unpruned reference, and the layer-averaged visual-token count
EFFICIENCY_COLUMNS = ("ttft_ms", "mem_peak_mb", "gflops_prefill", "speedup_prefill", "tokens_equiv")
# columns that come from the clock or the allocator: they differ between two runs of the same configuration
MEASURED_COLUMNS = (*LATENCY_COLUMNS, "speedup", "ttft_ms", "mem_peak_mb", "speedup_prefill")
ROW_COLUMNS = (
    "model",
    "dataset",
    "split",
    "task",
    "pruner",
    "ratio",
    "n_samples",
    "n_failed",
    "tokens_total",
    "tokens_kept",
    *METRIC_COLUMNS,
    *LATENCY_COLUMNS,
    "speedup",
    *EFFICIENCY_COLUMNS,
)
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
SAMPLES_JSONL = "samples.jsonl"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, numpy scalars become Python numbers."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def normalise_row(row: dict[str, Any]) -> dict[str, Any]:
    """All contract columns in order (missing ones null), then any extra columns."""
    out = {col: _clean(row.get(col)) for col in ROW_COLUMNS}
    for key, value in row.items():
        if key not in out:
            out[key] = _clean(value)
    return out


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def sample_accuracy(record: dict[str, Any]) -> float | None:
    """A per-sample record's primary accuracy: IoU for images, J&F for videos (None when it has neither)."""
    for key in ("iou", "JF"):
        if record.get(key) is not None:
            return float(record[key])
    return None


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def command_line() -> str:
    """The command as typed: `evtp ...` for the script and for `python -m evtp_cli` (also under torchrun)."""
    argv = list(sys.argv)
    if argv and (Path(argv[0]).name == "evtp" or argv[0].endswith(os.path.join("evtp_cli", "__main__.py"))):
        argv[0] = "evtp"
    return " ".join(shlex.quote(a) for a in argv)


def run_meta(seed: int, device: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Provenance for results.json: versions, commit, device, seed, command line, start time."""
    import importlib.metadata

    import torch

    try:  # the installed version, without importing transformers (seconds per process)
        tf_version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - transformers is a dependency
        tf_version = None
    device_name = platform.processor() or platform.machine()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(torch.device(device))
    meta = {
        "evtp_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "transformers_version": tf_version,
        "python_version": platform.python_version(),
        "device": str(device),
        "device_name": device_name,
        "seed": seed,
        "command": command_line(),
        "start_time": now_iso(),
        "end_time": None,
    }
    if extra:
        meta.update(extra)
    return meta


def prepare_output(path: str | Path) -> Path:
    """Create the output folder; an unwritable location is a user error."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".evtp-write-test-{os.getpid()}"  # per process: torchrun ranks probe at once
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise EvtpError(f"cannot write to output folder {str(out)!r} ({exc.strerror}); choose another --output") from None
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(output: str | Path, rows: Iterable[dict[str, Any]], meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write results.json ({"meta", "rows"}) and results.csv with the same rows."""
    import pandas as pd

    out = Path(output)
    rows = [normalise_row(r) for r in rows]
    meta = dict(meta)
    meta.setdefault("end_time", None)
    if meta["end_time"] is None:
        meta["end_time"] = now_iso()
    json_path = out / RESULTS_JSON
    _atomic_write(json_path, json.dumps({"meta": _clean(meta), "rows": rows}, indent=2) + "\n")
    csv_path = out / RESULTS_CSV
    columns = list(ROW_COLUMNS) + sorted({k for r in rows for k in r} - set(ROW_COLUMNS))
    _atomic_write(csv_path, pd.DataFrame(rows, columns=columns).to_csv(index=False))
    return json_path, csv_path


def read_results(path: str | Path) -> dict[str, Any]:
    """Read results.json (or the results.json inside a folder). Corrupt or missing files are user errors."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_JSON
    if not p.is_file():
        raise EvtpError(f"results file not found: {str(p)!r} (give a results.json or a run's output folder)")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvtpError(f"{str(p)!r} is not valid JSON ({exc}); regenerate it or point at another file") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise EvtpError(f"{str(p)!r} is not an evtp results file (expected {{'meta': ..., 'rows': [...]}})")
    return data


class SampleLog:
    """Append-only samples.jsonl: one record per sample per setting, flushed as it is written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh = None

    def __enter__(self) -> "SampleLog":
        self._fh = open(self.path, "a", encoding="utf-8")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(_clean(record), separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    @staticmethod
    def read(path: str | Path) -> Iterator[dict[str, Any]]:
        """Records of a samples.jsonl; a torn last line (a run killed mid-write) is skipped."""
        p = Path(path)
        if not p.exists():
            return
        with open(p, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue
