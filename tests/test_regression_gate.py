"""CI's regression gate: the short tiny-ivs sweep must match the committed baseline (benchmarks/baselines/)."""

import pytest

from evtp_cli.bench.regression import BASELINE, run_gate
from evtp_cli.bench.results import read_results


@pytest.mark.slow
def test_short_sweep_matches_committed_baseline(tmp_path, capsys):
    assert (BASELINE / "results.json").is_file(), "refresh with: python -m evtp_cli.bench.regression --update"
    code = run_gate(tmp_path / "gate")
    out = capsys.readouterr().out
    assert code == 0, out
    rows = read_results(tmp_path / "gate")["rows"]
    assert {r["pruner"] for r in rows} == {"none", "evtp", "kcenter", "random"}
