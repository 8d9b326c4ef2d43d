"""Time every registered pruner's `select` at image and video sizes, on CPU or CUDA.

    python benchmarks/bench_select.py                      # CPU: images of 256 and 1024 tokens, a 16 x 256 video, d = 1024
    python benchmarks/bench_select.py --device cuda        # adds d = 3584 (a 7B LLM's width); CUDA events, warm-up
    python benchmarks/bench_select.py --json               # the same numbers as JSON on stdout

Besides the registered pruners (with their default options, found through `list_pruners()`, so a new
pruner shows up by itself) it times `evtp:mode=global`, the straightforward EVTP reference
(`evtp_select_reference`) and the published DivPrune loop (`divprune_reference`, the "DivPrune rule"),
all in this one process on the same inputs, and prints the speed-up of EVTP over the DivPrune rule.
Inputs are seeded random features on a token grid; selection time does not depend on their values
beyond ties. Everything printed is measured here; nothing is stored or assumed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from evtp_cli.api import frame_index, keep_count
from evtp_cli.errors import PrunerNotApplicable
from evtp_cli.pruners import evtp as evtp_module
from evtp_cli.pruners import get_pruner, list_pruners
from evtp_cli.pruners.divprune import divprune_reference
from evtp_cli.pruners.evtp import evtp_select, evtp_select_reference


@dataclass
class Row:
    size: str  # e.g. "video 16x256"
    n: int
    d: int
    k: int
    method: str
    median_ms: float | None
    repeats: int
    note: str = ""


def grid(frames: int, tokens_per_frame: int) -> torch.Tensor:
    """(t, y, x) patch centres of a frames x side x side grid (side = sqrt(tokens), or a 1 x tokens strip)."""
    side = int(round(tokens_per_frame**0.5))
    h, w = (side, side) if side * side == tokens_per_frame else (1, tokens_per_frame)
    t = torch.arange(frames, dtype=torch.float32) / max(frames - 1, 1)
    y = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    x = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    tt, yy, xx = torch.meshgrid(t, y, x, indexing="ij")
    return torch.stack([tt.flatten(), yy.flatten(), xx.flatten()], dim=1)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call (CUDA events around it on a GPU, perf_counter on CPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_round_robin(calls: list[tuple[Callable[[], object], int, int]], device: torch.device) -> list[float | Exception]:
    """Median ms of each (fn, repeats, warmup); runs interleave (one of each method per round), so a
    change of load on a shared machine falls on all methods alike. A call that raises gets its error."""
    times: list[list[float]] = [[] for _ in calls]
    errors: dict[int, Exception] = {}
    for i, (fn, _, warmup) in enumerate(calls):
        try:
            for _ in range(warmup):
                fn()
        except Exception as err:  # noqa: BLE001 - reported in the method's row
            errors[i] = err
    for r in range(max(repeats for _, repeats, _ in calls)):
        for i, (fn, repeats, _) in enumerate(calls):
            if r < repeats and i not in errors:
                try:
                    times[i].append(timed(fn, device))
                except Exception as err:  # noqa: BLE001 - reported in the method's row
                    errors[i] = err
    return [errors.get(i) or statistics.median(t) for i, t in enumerate(times)]


def raise_(err: Exception) -> None:
    raise err


def rows_only(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` with EVTP's CPU fast path held to rows built on demand, whatever the size (no whole matrix)."""

    def call() -> object:
        saved = evtp_module.CPU_MATRIX_ENTRIES_PER_STEP
        evtp_module.CPU_MATRIX_ENTRIES_PER_STEP = 0
        try:
            return fn()
        finally:
            evtp_module.CPU_MATRIX_ENTRIES_PER_STEP = saved

    return call


def methods(features: torch.Tensor, coords: torch.Tensor, k: int, with_torch_loop: bool) -> list[tuple[str, Callable[[], object], bool]]:
    """(name, call, is_reference) for every method timed at one size."""
    frame_ids = frame_index(coords)
    out: list[tuple[str, Callable[[], object], bool]] = []
    for name in list_pruners():
        try:
            pruner = get_pruner(name)
        except Exception as err:  # noqa: BLE001 - e.g. a plug-in that does not import here: its row says so
            out.append((name, lambda e=err: raise_(e), False))
            continue
        out.append((name, lambda p=pruner: p.select(features, coords, k), False))
    glob = get_pruner("evtp", mode="global")
    out.append(("evtp:mode=global", lambda: glob.select(features, coords, k), False))
    if with_torch_loop:  # the same selection without the Triton kernel
        for mode in ("per-frame", "global"):
            out.append((f"evtp {mode}, torch loop", lambda m=mode: evtp_select(features, coords, k, frame_ids, mode=m, backend="torch"), False))
    elif features.device.type == "cpu":  # the same selection without the whole-matrix form for small sizes
        default = get_pruner("evtp")
        out.append(("evtp, rows only", rows_only(lambda: default.select(features, coords, k)), False))
    for mode in ("per-frame", "global"):
        out.append((f"evtp reference, {mode}", lambda m=mode: evtp_select_reference(features, coords, k, frame_ids, mode=m), True))
    out.append(("DivPrune rule (reference)", lambda: divprune_reference(features, k), True))
    return out


def measure(args: argparse.Namespace) -> tuple[list[Row], dict]:
    device = torch.device(args.device)
    dims = args.dims or ([1024, 3584] if device.type == "cuda" else [1024])
    sizes = [(f"image {n}", 1, n) for n in args.image_tokens]
    sizes.append((f"video {args.frames}x{args.frame_tokens}", args.frames, args.frame_tokens))
    rows: list[Row] = []
    gen = torch.Generator().manual_seed(args.seed)
    for d in dims:
        for label, frames, per_frame in sizes:
            if d != dims[0] and frames == 1:
                continue  # the wide LLM width only at the video size, where selection costs most
            coords = grid(frames, per_frame).to(device)
            n = coords.shape[0]
            features = torch.randn(n, d, generator=gen).to(device)
            k = keep_count(args.ratio, n)
            named = methods(features, coords, k, with_torch_loop=device.type == "cuda")
            calls = []
            for _, fn, is_reference in named:
                repeats = args.reference_repeats if is_reference else args.repeats
                warmup = args.warmup if device.type == "cuda" else 0 if is_reference else 1
                calls.append((fn, repeats, warmup))
            print(f"  timing {label}, d={d}", file=sys.stderr, flush=True)
            for (name, _, _), (_, repeats, _), ms in zip(named, calls, time_round_robin(calls, device)):
                if isinstance(ms, PrunerNotApplicable):
                    rows.append(Row(label, n, d, k, name, None, 0, f"skipped: {ms}"))
                elif isinstance(ms, Exception):
                    rows.append(Row(label, n, d, k, name, None, 0, f"failed: {type(ms).__name__}: {ms}"[:160]))
                else:
                    rows.append(Row(label, n, d, k, name, ms, repeats))
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine while it ran
        "torch": torch.__version__,
        "ratio": args.ratio,
        "timing": "CUDA events after warm-up" if device.type == "cuda" else "time.perf_counter",
        "command": " ".join(["python benchmarks/bench_select.py", *args.argv]),
    }
    return rows, meta


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def speedups(rows: list[Row]) -> list[dict]:
    """EVTP (global and default) against the DivPrune rule, at every size where both were timed."""
    out = []
    for size, d in sorted({(r.size, r.d) for r in rows}, key=lambda s: (s[1], s[0])):
        at = {r.method: r.median_ms for r in rows if r.size == size and r.d == d and r.median_ms}
        rule = at.get("DivPrune rule (reference)")
        for method in ("evtp:mode=global", "evtp"):
            if rule and at.get(method):
                out.append({"size": size, "d": d, "method": method, "vs": "DivPrune rule", "speedup": rule / at[method]})
    return out


def render(rows: list[Row], meta: dict, gains: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if Console().is_terminal else 120)
    table = Table(
        title=f"selection time, median ms ({meta['device']}, {meta['cpu_count']} CPUs, {meta['torch_threads']} torch threads, "
        f"load average {meta['load_average_1min']}, {meta['timing']})"
    )
    for col in ("size", "d", "k", "method", "median ms", "runs"):
        table.add_column(col, justify="left" if col in ("size", "method") else "right", no_wrap=True)
    for r in rows:
        if r.median_ms is not None:
            table.add_row(r.size, str(r.d), str(r.k), r.method, f"{r.median_ms:.2f}", str(r.repeats))
    console.print(table)
    notes = {r.method: r.note for r in rows if r.note}
    for method, note in notes.items():
        console.print(f"{method}: {note}", markup=False)
    for g in gains:
        console.print(f"{g['size']}, d={g['d']}: {g['method']} is {g['speedup']:.1f}x as fast as the {g['vs']}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per method (median reported)")
    ap.add_argument("--reference-repeats", type=int, default=1, help="timed runs of the slow references")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs first (CUDA)")
    ap.add_argument("--image-tokens", type=int, nargs="*", default=[256, 1024], help="image sizes in tokens")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--frame-tokens", type=int, default=256)
    ap.add_argument("--dims", type=int, nargs="*", default=None, help="feature widths (default 1024; 1024 3584 on CUDA)")
    ap.add_argument("--ratio", type=float, default=0.2, help="keep ratio: k = round(ratio * N)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    if not 0 < args.ratio <= 1:
        ap.error(f"--ratio {args.ratio} is outside (0, 1]")
    for name in ("repeats", "reference_repeats", "frames", "frame_tokens"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or any(n < 1 for n in args.image_tokens) or any(d < 1 for d in args.dims or []):
        ap.error("--warmup must be >= 0, and --image-tokens and --dims >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    rows, meta = measure(args)
    gains = speedups(rows)
    if args.json:
        print(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows], "speedups": gains}, indent=1))
    else:
        render(rows, meta, gains)
    failed = [r for r in rows if r.note.startswith("failed")]
    return 1 if failed else 0  # gpu_check.sh counts on it


if __name__ == "__main__":
    sys.exit(main())
