"""The CI regression gate: a short tiny-ivs sweep compared with the committed baseline.

    python -m evtp_cli.bench.regression            # run the sweep, compare, exit 1 on a regression
    python -m evtp_cli.bench.regression --update   # deliberately refresh the committed baseline

CI runs it as part of the test suite (tests/test_regression_gate.py). Accuracy must not drop by more
than 0.01; latency may grow up to 3× before the gate fails, because the baseline's CPU timings come
from another machine and CPU timings are noisy (the 1.5× default of `evtp compare` is for comparing
runs on one machine).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

BASELINE = Path(__file__).resolve().parents[2] / "benchmarks" / "baselines" / "tiny-sweep"
SWEEP = [
    "sweep-ratios",
    "--models", "tiny-ivs",
    "--datasets", "synthetic-image:n=40,seed=11,synthetic-video:n=10,seed=11",
    "--pruners", "evtp,kcenter,random",
    "--ratios", "0.1,0.2",
]
MAX_DROP = "0.01"
MAX_SLOWDOWN = "3.0"


def _cli(args: list[str]) -> int:
    from evtp_cli.cli import main

    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def run_gate(workdir: Path) -> int:
    """Run the sweep into workdir and compare it with the baseline; returns the exit code."""
    code = _cli([*SWEEP, "--output", str(workdir), "--overwrite"])
    if code:
        return code
    return _cli(["compare", str(BASELINE / "results.json"), str(workdir / "results.json"), "--max-drop", MAX_DROP, "--max-slowdown", MAX_SLOWDOWN])


def update_baseline() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="evtp-baseline-"))
    code = _cli([*SWEEP, "--output", str(tmp), "--overwrite"])
    if code:
        print(f"the sweep failed; what it wrote is kept in {tmp}")
        return code
    BASELINE.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "results.csv", "table.md"):
        shutil.copy(tmp / name, BASELINE / name)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"baseline refreshed in {BASELINE}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="rewrite the committed baseline from a fresh run")
    parser.add_argument("--output", default=None, help="where the sweep writes (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.update:
        raise SystemExit(update_baseline())
    if args.output:
        raise SystemExit(run_gate(Path(args.output)))
    workdir = Path(tempfile.mkdtemp(prefix="evtp-gate-"))
    code = run_gate(workdir)
    if code:
        print(f"the sweep's results are kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
