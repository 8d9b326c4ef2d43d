"""CI's regression gate: the short tiny-ivs sweep must match the committed baseline (benchmarks/baselines/)."""

import json

import pytest

from evtp_cli.bench.regression import BASELINE, run_gate


@pytest.mark.slow
def test_short_sweep_matches_committed_baseline(tmp_path, capsys):
    assert (BASELINE / "results.json").is_file(), "refresh with: python -m evtp_cli.bench.regression --update"
    code = run_gate(tmp_path / "gate")
    out = capsys.readouterr().out
    assert code == 0, out
    rows = json.loads((tmp_path / "gate" / "results.json").read_text())["rows"]
    assert {r["pruner"] for r in rows} == {"none", "evtp", "kcenter", "random"}
