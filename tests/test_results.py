import json
import math

import pandas as pd
import pytest

from evtp_cli.bench.results import (
    ROW_COLUMNS,
    SampleLog,
    normalise_row,
    read_results,
    run_meta,
    write_results,
)
from evtp_cli.errors import EvtpError


def test_write_and_read_results(tmp_path):
    rows = [{"model": "m", "dataset": "d", "task": "image", "pruner": "evtp", "ratio": 0.2, "giou": 0.5, "J": float("nan"), "extra_col": 3}]
    meta = run_meta(seed=0, device="cpu")
    json_path, csv_path = write_results(tmp_path, rows, meta)
    data = json.loads(json_path.read_text())
    assert list(data["rows"][0])[: len(ROW_COLUMNS)] == list(ROW_COLUMNS)
    assert data["rows"][0]["J"] is None and data["rows"][0]["giou"] == 0.5 and data["rows"][0]["extra_col"] == 3
    for key in ("evtp_version", "git_commit", "torch_version", "transformers_version", "device_name", "seed", "command", "start_time", "end_time"):
        assert key in data["meta"]
    frame = pd.read_csv(csv_path)
    assert list(frame.columns[: len(ROW_COLUMNS)]) == list(ROW_COLUMNS)
    assert frame.loc[0, "pruner"] == "evtp" and math.isnan(frame.loc[0, "J"])
    assert read_results(tmp_path)["rows"] == data["rows"]


def test_read_results_errors(tmp_path):
    with pytest.raises(EvtpError, match="not found"):
        read_results(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EvtpError, match="not valid JSON"):
        read_results(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(EvtpError, match="not an evtp results file"):
        read_results(bad)


def test_sample_log_appends_flushes_and_skips_torn_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    log = SampleLog(path)
    log.write({"id": "a", "iou": 0.5})
    # flushed: readable before close
    assert [r["id"] for r in SampleLog.read(path)] == ["a"]
    log.write({"id": "b", "iou": float("nan")})
    log.close()
    with open(path, "a") as fh:
        fh.write('{"id": "c", "io')  # a run killed mid-write
    records = list(SampleLog.read(path))
    assert [r["id"] for r in records] == ["a", "b"] and records[1]["iou"] is None


def test_normalise_row_fills_missing_columns():
    row = normalise_row({"model": "x"})
    assert set(ROW_COLUMNS) <= set(row) and row["giou"] is None
