"""The regression gate: identical results pass, a 0.05 gIoU drop or a missing row fails (exit 1)."""

import copy

import pytest

from evtp_cli.bench.compare import compare_rows
from evtp_cli.bench.results import run_meta, write_results
from evtp_cli.cli import main

ROWS = [
    {"model": "tiny-ivs", "dataset": "synthetic-image", "task": "image", "pruner": "none", "ratio": 1.0, "n_samples": 10, "giou": 0.8, "ciou": 0.78, "ms_total": 10.0},
    {"model": "tiny-ivs", "dataset": "synthetic-image", "task": "image", "pruner": "evtp", "ratio": 0.2, "n_samples": 10, "giou": 0.79, "ciou": 0.77, "ms_total": 6.0},
    {"model": "tiny-ivs", "dataset": "synthetic-video", "task": "video", "pruner": "evtp", "ratio": 0.2, "n_samples": 5, "J": 0.7, "F": 0.75, "JF": 0.725, "ms_total": 30.0},
]


def _write(tmp_path, name, rows):
    out = tmp_path / name
    out.mkdir()
    write_results(out, rows, run_meta(0, "cpu"))
    return out / "results.json"


def _run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return exc.value.code, capsys.readouterr().out


def test_identical_results_pass(tmp_path, capsys):
    a = _write(tmp_path, "a", ROWS)
    b = _write(tmp_path, "b", ROWS)
    code, out = _run(capsys, "compare", str(a), str(b))
    assert code == 0 and "no regression" in out


def test_giou_drop_fails(tmp_path, capsys):
    worse = copy.deepcopy(ROWS)
    worse[1]["giou"] -= 0.05
    code, out = _run(capsys, "compare", str(_write(tmp_path, "a", ROWS)), str(_write(tmp_path, "b", worse)))
    assert code == 1 and "REGRESSION" in out and "giou" in out


def test_small_drop_within_tolerance_passes():
    worse = copy.deepcopy(ROWS)
    worse[2]["JF"] -= 0.005
    assert compare_rows(ROWS, worse, max_drop=0.01).ok
    assert not compare_rows(ROWS, worse, max_drop=0.001).ok


def test_missing_row_and_slowdown_fail():
    assert not compare_rows(ROWS, ROWS[:2]).ok
    slow = copy.deepcopy(ROWS)
    slow[0]["ms_total"] = 16.0
    result = compare_rows(ROWS, slow, max_slowdown=1.5)
    assert [c.column for c in result.regressions] == ["ms_total"]
    assert compare_rows(ROWS, slow, max_slowdown=2.0).ok


def test_bad_files_are_user_errors(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{oops")
    code, _ = _run(capsys, "compare", str(tmp_path / "x.json"), str(tmp_path / "x.json"))
    assert code == 2
    code, _ = _run(capsys, "compare", str(tmp_path / "none.json"), str(tmp_path / "x.json"))
    assert code == 2
