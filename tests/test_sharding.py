"""torchrun sharding: 2 CPU processes (gloo) give exactly the metrics of 1 process; rank files merge into samples.jsonl."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evtp_cli.bench.distributed import Shard
from evtp_cli.bench.results import read_results
from evtp_cli.cli import main

ARGS = ["prune-eval", "-d", "synthetic-image:n=6,size=32,synthetic-video:n=3,frames=3,size=32", "-p", "random", "-r", "0.3", "--limit", "5"]
METRICS = ["model", "dataset", "split", "task", "pruner", "ratio", "n_samples", "n_failed", "tokens_total", "tokens_kept",
           "giou", "ciou", "J", "F", "JF"]


def test_shard_indices_partition_the_samples():
    shards = [Shard(rank=r, world=3) for r in range(3)]
    parts = [list(s.indices(10)) for s in shards]
    assert sorted(i for p in parts for i in p) == list(range(10)) and parts[1] == [1, 4, 7]


def test_cuda_means_the_local_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert Shard(rank=3, world=4, local_rank=1).device("cuda") == "cuda:1"
    assert Shard(rank=2, world=4, local_rank=2).device("cuda") == "cuda:0"  # 4 processes on 2 GPUs
    assert Shard(rank=1, world=2, local_rank=1).device("cuda:0") == "cuda:0" and Shard().device("cuda") == "cuda"


def test_bad_torchrun_environment_is_a_user_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(SystemExit) as exc:
        main([*ARGS, "-o", str(tmp_path)])
    assert exc.value.code == 2 and "RANK=5 and WORLD_SIZE=2" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="torchrun not installed")
def test_two_gloo_processes_match_one_process(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "evtp_cli", *ARGS, "-o", str(two)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with pytest.raises(SystemExit) as exc:
        main([*ARGS, "-o", str(one)])
    assert exc.value.code == 0
    rows_one = read_results(one)["rows"]
    data_two = read_results(two)
    assert data_two["meta"]["world_size"] == 2
    assert [{k: r[k] for k in METRICS} for r in data_two["rows"]] == [{k: r[k] for k in METRICS} for r in rows_one]
    assert all(r["n_samples"] == (5 if r["task"] == "image" else 3) for r in rows_one)
    # the rank files are folded into one samples.jsonl holding every sample once, both ranks' shares
    assert not list(two.glob("samples.rank*.jsonl"))
    records = [json.loads(line) for line in (two / "samples.jsonl").read_text().splitlines()]
    keys = {(r["dataset"], r["pruner"], r["index"]) for r in records}
    assert len(records) == len(keys) == (5 + 3) * 2
    # and the merged folder resumes like any other: nothing left to evaluate, the same rows
    with pytest.raises(SystemExit) as exc:
        main([*ARGS, "-o", str(two), "--resume"])
    assert exc.value.code == 0
    assert [{k: r[k] for k in METRICS} for r in read_results(two)["rows"]] == [
        {k: r[k] for k in METRICS} for r in rows_one
    ]
