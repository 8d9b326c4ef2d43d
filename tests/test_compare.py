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


def test_a_drop_of_exactly_max_drop_passes():
    base = [dict(ROWS[0], giou=0.50)]
    assert compare_rows(base, [dict(ROWS[0], giou=0.49)], max_drop=0.01).ok  # 0.50 - 0.49 is 0.01000000000000001 in floats
    assert not compare_rows(base, [dict(ROWS[0], giou=0.4899)], max_drop=0.01).ok


@pytest.mark.parametrize(
    "change, column",
    [
        ({"giou": float("nan")}, "giou"),
        ({"ms_total": None}, "ms_total"),
        ({"ms_total": 0.0}, "ms_total"),
        ({"n_samples": 7, "n_failed": 3}, "n_failed"),  # the metric averages only the 7 that did not fail
    ],
)
def test_missing_numbers_and_new_failures_are_regressions(change, column):
    current = copy.deepcopy(ROWS)
    current[1].update(change)
    result = compare_rows(ROWS, current)
    assert [c.column for c in result.regressions] == [column]


def test_option_order_does_not_decide_a_match_and_new_rows_are_listed():
    base = [dict(ROWS[0], dataset="synthetic-image:n=6,size=32", pruner="evtp:spatial_weight=0.5,mode=global")]
    current = [dict(ROWS[0], dataset="synthetic-image:size=32,n=6", pruner="evtp:mode=global,spatial_weight=0.5"), ROWS[1]]
    result = compare_rows(base, current)
    assert result.ok and result.compared == 1
    assert [(c.key[2], c.note) for c in result.changes] == [("evtp", "new: not in the baseline")]


def test_empty_baseline_is_a_user_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(_write(tmp_path, "a", [])), str(_write(tmp_path, "b", ROWS))])
    assert exc.value.code == 2 and "has no rows, so nothing can be compared" in capsys.readouterr().err


def test_duplicate_baseline_rows_are_compared_once():
    base = [ROWS[0], dict(ROWS[0], dataset="synthetic-image")]
    result = compare_rows(base, ROWS[:1])
    assert result.ok and result.compared == 1
    assert [c.note for c in result.changes] == ["duplicate baseline row, compared once"]


def test_what_moved_names_the_model_when_several_moved(tmp_path, capsys):
    base = [ROWS[1], dict(ROWS[1], model="sa2va-qwen:preset=tiny-random")]
    worse = [dict(r, giou=r["giou"] - 0.05) for r in base]
    code, out = _run(capsys, "compare", str(_write(tmp_path, "a", base)), str(_write(tmp_path, "b", worse)))
    header = next(line for line in out.splitlines() if "dataset" in line and "verdict" in line)
    assert code == 1 and header.replace("┃", " ").split()[0] == "model"
    assert "tiny-ivs" in out and "sa2va-qwen:preset=tiny-random" in "".join(out.split())
    code, out = _run(capsys, "compare", str(_write(tmp_path, "c", base[:1])), str(_write(tmp_path, "d", worse[:1])))
    header = next(line for line in out.splitlines() if "dataset" in line and "verdict" in line)
    assert code == 1 and header.replace("┃", " ").split()[0] == "dataset"
