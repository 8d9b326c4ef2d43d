"""Runs that survive: one-line errors, failed samples, --max-failures, resume and the output-folder guard."""

import json
import re

import pytest
from test_cli import run_cli as cli

from evtp_cli.bench import evaluate as ev
from evtp_cli.bench.results import read_results
from evtp_cli.bench.resume import DoneIndex, load_done, merge_sample_files, repair_tail
from evtp_cli.cli import main

METRICS = ["model", "dataset", "split", "task", "pruner", "ratio", "n_samples", "n_failed", "tokens_total", "tokens_kept",
           "giou", "ciou", "J", "F", "JF", "A", "R", "JF_referring", "JF_reasoning"]



def lines(text):
    return [line for line in text.splitlines() if line.strip()]


def rows_of(folder):
    return read_results(folder)["rows"]


def metric_columns(rows):
    return [{k: r.get(k) for k in METRICS} for r in rows]


# --- 1. bad input: exit 2, one line, no traceback --------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["prune-eval", "--ratio", "1.5"], r"outside \(0, 1\]"),
        (["prune-eval", "--ratio", "0"], r"outside \(0, 1\]"),
        (["sweep-ratios", "--ratios", "0.2,abc"], r"'abc' is not a number"),
        (["sweep-ratios", "--ratios", "0.1,0.10"], r"keep ratio 0.1 is given twice"),
        (["sweep-ratios", "--ratios", ","], r"give at least one pruner and one keep ratio"),
        (["sweep-ratios", "-p", "evtp", "-p", "uniform,evtp"], r"pruner 'evtp' is given twice"),
        (["prune-eval", "-m", "nosuch"], r"unknown model 'nosuch'; known models: .*tiny-ivs"),
        (["prune-eval", "-d", "nosuch"], r"unknown dataset 'nosuch'; known datasets: .*synthetic-image"),
        (["prune-eval", "-p", "nosuch"], r"unknown pruner 'nosuch'; known pruners: .*evtp.*kcenter"),
        (["prune-eval", "-p", "evtp:bogus=1"], r"unknown option 'bogus'.*known options: .*spatial_weight"),
        (["prune-eval", "-d", "synthetic-image:n"], r"malformed option 'n'"),
        (["prune-eval", "-d", "synthetic-image:"], r"malformed spec"),
        (["prune-eval", "-d", "mevis:root=/nonexistent/mevis"], r"/nonexistent/mevis does not exist.*expected layout: ROOT/.*JPEGImages"),
        (["prune-eval", "-m", "tiny-ivs:weights=/nonexistent/w.safetensors"], r"weights not found at '/nonexistent/w.safetensors'"),
        (["prune-eval", "-d", "mevis"], r"dataset 'mevis' needs option root, e.g. mevis:root="),
        (["prune-eval", "--device", "bogus"], r"device='bogus' is not a torch device; use cpu"),
        (["prune-eval", "--device", "cuda:99"], r"device=cuda:99"),
        (["prune-eval", "--device", "meta"], r"device=meta holds no data"),
        (["visualize", "-p", "uniform", "--device", "bogus"], r"device='bogus' is not a torch device"),
        (["prune-eval", "-m", "sa2va-qwen:preset=tiny-random,pipeline=generate"], r"pipeline=generate is the unpruned reference"),
        (["prune-eval", "-m", "sa2va-qwen:preset=bogus"], r"'bogus' is not one of tiny-random, 3b-random"),
        (["prune-eval", "--max-failures", "-1"], r"--max-failures must be >= 0"),
        (["prune-eval", "--resume", "--overwrite"], r"exclude each other"),
        (["report", "/nonexistent/run"], r"results folder not found"),
        (["visualize", "--sample", "no-such-id", "-p", "uniform"], r"no sample with id 'no-such-id'.*synthetic-image-test"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, args, expected):
    code, _, err = cli(capsys, *args, "-o", str(tmp_path / "out")) if args[0] in ("prune-eval", "sweep-ratios") else cli(capsys, *args)
    assert code == 2, err
    assert len(lines(err)) == 1, err
    assert "Traceback" not in err and re.search(expected, err), err
    assert not (tmp_path / "out").exists(), "bad input is caught before the output folder is made"


@pytest.mark.parametrize("command", ["prune-eval", "sweep-ratios"])
def test_a_dataset_without_samples_is_bad_input(capsys, tmp_path, command):
    """An exported ReasonSeg folder holds short queries only, so query=long matches none: that is a
    mistake in the options, not a run with empty rows and exit 0."""
    code, _, err = cli(capsys, "make-synthetic", "--format", "reasonseg", "-n", "2", "--out", str(tmp_path / "rs"))
    assert code == 0, err
    spec = f"reasonseg:root={tmp_path / 'rs'},split=val,query=long"
    code, _, err = cli(capsys, command, "-d", spec, "-o", str(tmp_path / "out"))
    assert code == 2 and len(lines(err)) == 1, err
    assert "has no samples" in err and "evtp list reasonseg" in err, err
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = cli(capsys, "prune-eval", "-n", "1", "-o", str(blocker / "out"))
    assert code == 2 and len(lines(err)) == 1 and "cannot write to output folder" in err and str(blocker) in err


def test_device_check_by_hand(monkeypatch):
    """check_device's branches, with torch's CUDA view faked (CI has no GPU)."""
    import torch

    from evtp_cli.errors import EvtpError
    from evtp_cli.models.base import check_device

    check_device("cpu")
    check_device("meta")  # shape-only builds
    with pytest.raises(EvtpError, match="device=meta holds no data"):
        check_device("meta", allow_meta=False)
    with pytest.raises(EvtpError, match="'gpu0' is not a torch device"):
        check_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EvtpError, match="torch sees no CUDA device; use device=cpu"):
        check_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device("cuda")
    check_device("cuda:1")
    with pytest.raises(EvtpError, match=r"device=cuda:2: torch sees 2 CUDA device\(s\), numbered from 0"):
        check_device("cuda:2")


def test_make_synthetic_onto_a_file(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = cli(capsys, "make-synthetic", "--format", "mevis", "--out", str(blocker), "-n", "1")
    assert code == 2 and len(lines(err)) == 1 and "choose another --out" in err and str(blocker) in err


def test_debug_shows_the_traceback(capsys, tmp_path):
    code, _, err = cli(capsys, "prune-eval", "-p", "nosuch", "-o", str(tmp_path), "--debug")
    assert code == 2 and "Traceback" in err


# --- 2. failing samples: recorded, left out, summarised; --max-failures ---------------------------------


@pytest.fixture(scope="module")
def corrupt_mevis(tmp_path_factory):
    """A MeViS-layout folder of 3 videos; video v00001 has two expressions and one unreadable JPEG."""
    root = tmp_path_factory.mktemp("mevis")
    with pytest.raises(SystemExit):
        main(["make-synthetic", "--format", "mevis", "--out", str(root), "-n", "3", "--frames", "3", "--size", "32"])
    meta_path = root / "valid_u" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    exprs = meta["videos"]["v00001"]["expressions"]
    exprs["1"] = {**exprs["0"], "exp": "the same object, asked again"}
    meta_path.write_text(json.dumps(meta))
    (root / "valid_u" / "JPEGImages" / "v00001" / "00001.jpg").write_bytes(b"not a jpeg")
    return root


def test_corrupt_jpeg_fails_only_its_video(capsys, tmp_path, corrupt_mevis):
    out = tmp_path / "run"
    code, stdout, err = cli(capsys, "prune-eval", "-d", f"mevis:root={corrupt_mevis},split=valid_u", "-p", "uniform", "-o", str(out))
    assert code == 0, err
    for row in rows_of(out):
        assert row["n_samples"] == 2 and row["n_failed"] == 2 and row["JF"] is not None
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    failed = [r for r in records if r["status"] == "failed"]
    assert sorted({r["id"] for r in failed}) == ["v00001/0", "v00001/1"] and len(failed) == 4
    assert all("00001.jpg" in r["reason"] for r in failed)
    assert {r["id"] for r in records if r["status"] == "ok"} == {"v00000/0", "v00002/0"}
    summary = " ".join(stdout.split())
    assert "2 failed sample(s)" in summary and "v00001/0, v00001/1" in summary and "cannot read image" in summary
    meta = read_results(out)["meta"]
    assert meta["failed_samples"] == {f"mevis:root={corrupt_mevis},split=valid_u": ["v00001/0", "v00001/1"]}


def test_max_failures_stops_with_exit_3_after_writing(capsys, tmp_path, corrupt_mevis):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "prune-eval", "-d", f"mevis:root={corrupt_mevis},split=valid_u", "-p", "uniform", "-o", str(out),
                       "--max-failures", "0")
    assert code == 3 and "stopped after 1 failed samples (--max-failures 0)" in " ".join(err.split())
    data = read_results(out)
    assert data["meta"]["stopped_early"] is True
    assert [(r["n_samples"], r["n_failed"]) for r in data["rows"]] == [(1, 1), (1, 1)]  # v00000/0 scored, v00001/0 failed
    assert len((out / "samples.jsonl").read_text().splitlines()) == 4


# --- 3. resume and the output-folder guard ------------------------------------------------------------


class Interrupt(BaseException):
    """Stands in for the run being killed (not an Exception, so no sample-level handler catches it)."""


REAL_EVALUATE_ONE = ev._evaluate_one


def interrupt_after(monkeypatch, calls):
    real = REAL_EVALUATE_ONE
    seen = {"n": 0}

    def flaky(*args, **kwargs):
        seen["n"] += 1
        if calls is not None and seen["n"] > calls:
            raise Interrupt()
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "_evaluate_one", flaky)
    return seen


RESUME_ARGS = ["prune-eval", "-d", "synthetic-image:n=5,size=32,synthetic-video:n=3,frames=3,size=32", "-p", "random", "-r", "0.3"]


def test_resume_after_a_kill_gives_identical_rows(capsys, tmp_path, monkeypatch):
    fresh, killed = tmp_path / "fresh", tmp_path / "killed"
    assert cli(capsys, *RESUME_ARGS, "-o", str(fresh))[0] == 0
    # killed 7 evaluations in (5 images × 2 settings): image 3 has one setting done, the video set none
    interrupt_after(monkeypatch, 7)
    with pytest.raises(Interrupt):
        main([*RESUME_ARGS, "-o", str(killed)])
    before = (killed / "samples.jsonl").read_text()
    assert len(before.splitlines()) == 7
    with open(killed / "samples.jsonl", "a") as fh:  # the kill tore the record being written
        fh.write('{"model":"tiny-ivs","dataset":"synth')
    # without --resume the folder is refused; with it only what is missing is evaluated
    code, _, err = cli(capsys, *RESUME_ARGS, "-o", str(killed))
    assert code == 2 and "pass --resume" in err
    seen = interrupt_after(monkeypatch, None)
    code, stdout, err = cli(capsys, *RESUME_ARGS, "-o", str(killed), "--resume")
    assert code == 0, err
    assert seen["n"] == (5 + 3) * 2 - 7
    assert "7 finished sample record(s) reused" in " ".join(stdout.split())
    assert metric_columns(rows_of(killed)) == metric_columns(rows_of(fresh))
    records = [json.loads(line) for line in (killed / "samples.jsonl").read_text().splitlines()]  # torn line cut, no repeats
    assert len(records) == len(load_done(killed)) == (5 + 3) * 2


def test_resume_reuses_everything_and_refuses_another_configuration(capsys, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["prune-eval", "-d", "synthetic-image:n=3,size=32", "-p", "uniform", "-o", str(out)]
    assert cli(capsys, *args)[0] == 0
    first = rows_of(out)
    seen = interrupt_after(monkeypatch, None)
    assert cli(capsys, *args, "--resume")[0] == 0
    assert seen["n"] == 0 and metric_columns(rows_of(out)) == metric_columns(first)
    code, _, err = cli(capsys, *args[:-2], "-r", "0.5", "-o", str(out), "--resume")
    assert code == 2 and len(lines(err)) == 1 and "different configuration (ratios 0.2 → 0.5)" in err
    derived = ["table.md", "report.md", "coverage.csv", "coverage_summary.csv", "coverage.md", "coverage_x_tiny-ivs.png"]
    for name in [*derived, "notes.txt"]:
        (out / name).write_text("from the earlier run")
    code, _, err = cli(capsys, *args[:-2], "-r", "0.5", "-o", str(out), "--overwrite")
    assert code == 0 and seen["n"] == 3 * 2
    assert not any((out / name).exists() for name in derived) and (out / "notes.txt").is_file()  # only evtp's own files go
    assert [r["ratio"] for r in rows_of(out)] == [1.0, 0.5]
    assert {r["ratio"] for r in load_done(out).values()} == {1.0, 0.5}


def test_resume_revos_rows_with_subset_scores(capsys, tmp_path, monkeypatch):
    root = tmp_path / "revos"
    with pytest.raises(SystemExit):
        main(["make-synthetic", "--format", "revos", "--out", str(root), "-n", "4", "--frames", "2", "--size", "32"])
    args = ["prune-eval", "-d", f"revos:root={root}", "-p", "uniform", "-r", "0.3"]
    assert cli(capsys, *args, "-o", str(tmp_path / "fresh"))[0] == 0
    interrupt_after(monkeypatch, 3)
    with pytest.raises(Interrupt):
        main([*args, "-o", str(tmp_path / "killed")])
    interrupt_after(monkeypatch, None)
    assert cli(capsys, *args, "-o", str(tmp_path / "killed"), "--resume")[0] == 0
    fresh, resumed = rows_of(tmp_path / "fresh"), rows_of(tmp_path / "killed")
    assert fresh[0]["A"] is not None and fresh[0]["JF_referring"] is not None
    assert metric_columns(resumed) == metric_columns(fresh)


def test_repair_tail_and_merge_of_rank_files(tmp_path):
    main_file = tmp_path / "samples.jsonl"
    main_file.write_text('{"model":"m","dataset":"d","pruner":"p","ratio":0.5,"index":0,"id":"a","status":"ok"}\n{"torn')
    repair_tail(main_file)
    assert main_file.read_text().endswith("}\n") and len(main_file.read_text().splitlines()) == 1
    for rank, index in ((1, 1), (0, 2), (1, 3)):
        with open(tmp_path / f"samples.rank{rank}.jsonl", "a") as fh:
            fh.write(json.dumps({"model": "m", "dataset": "d", "pruner": "p", "ratio": 0.5, "index": index, "id": f"s{index}", "status": "ok"}) + "\n")
    assert merge_sample_files(tmp_path) == 4
    assert not list(tmp_path.glob("samples.rank*.jsonl"))
    assert [json.loads(line)["index"] for line in main_file.read_text().splitlines()] == [0, 1, 2, 3]


def test_done_index_reads_only_what_was_appended(tmp_path):
    def record(index: int, pruner: str = "p") -> str:
        return json.dumps({"model": "m", "dataset": "d", "pruner": pruner, "ratio": 0.5, "index": index, "id": f"s{index}"}) + "\n"

    index = DoneIndex(tmp_path)
    assert index.refresh() == {}
    with open(tmp_path / "samples.rank0.jsonl", "a") as r0, open(tmp_path / "samples.rank1.jsonl", "a") as r1:
        r0.write(record(0))
        r1.write(record(1) + "not json\n" + record(3)[:20])  # a record still being written
        r0.flush(), r1.flush()
        assert sorted(k[-1] for k in index.refresh()) == [0, 1]
        r1.write(record(3)[20:] + record(1, pruner="q"))
        r0.write(record(2) + record(0))  # a key written again keeps its latest record
        r1.flush(), r0.flush()
        refreshed = index.refresh()
    assert refreshed == load_done(tmp_path)
    assert sorted((k[2], k[-1]) for k in refreshed) == [("p", 0), ("p", 1), ("p", 2), ("p", 3), ("q", 1)]


# --- the replay itself, with a stand-in model: shards and resumes rebuild the rows of one pass -------------


class NotHere:
    """A pruner that the backend cannot serve (as an attention-based method on a backend without attention)."""

    stage, merges = "pre-llm", False

    def select_and_merge(self, *args):
        from evtp_cli.errors import PrunerNotApplicable

        raise PrunerNotApplicable("needs attention maps")


@pytest.mark.parametrize("spec", ["synthetic-image:n=7,size=32", "synthetic-video:n=5,frames=3,size=32"])
def test_shards_replayed_in_dataset_order_equal_one_pass(tmp_path, spec):
    from test_evaluate import OracleIfSeen

    from evtp_cli.bench.results import SampleLog
    from evtp_cli.data import load_dataset
    from evtp_cli.pruners import get_pruner

    ds = load_dataset(spec)
    model = OracleIfSeen(OracleIfSeen.Config(fail_on="00003"))
    settings = [(ev.Setting("m", spec, ev.REFERENCE, 1.0), None), (ev.Setting("m", spec, "random", 0.2), get_pruner("random")),
                (ev.Setting("m", spec, "nothere", 0.2), NotHere())]
    one = ev.evaluate_dataset(model, ds, settings, seed=1)
    for rank in range(3):  # three "ranks", each with its own file, as under torchrun
        with SampleLog(tmp_path / f"samples.rank{rank}.jsonl") as log:
            ev.evaluate_dataset(model, ds, settings, seed=1, log=log, indices=range(rank, len(ds), 3))
    merged = ev.evaluate_dataset(model, ds, settings, seed=1, done=load_done(tmp_path), replay_only=True)
    from evtp_cli.bench.results import MEASURED_COLUMNS

    strip = lambda rows: [{k: v for k, v in r.items() if k not in MEASURED_COLUMNS} for r in rows]  # noqa: E731
    assert strip(merged) == strip(one)
    assert one[1]["n_failed"] == 1 and one[2]["not_applicable"] == "needs attention maps" and one[2]["n_samples"] == 0


def test_results_meta_records_what_each_name_meant(capsys, tmp_path):
    code, _, err = cli(capsys, "sweep-ratios", "-d", "synthetic-image:n=2", "-p", "evtp:mode=global,kcenter", "-r", "0.2",
                       "-o", str(tmp_path / "out"))
    assert code == 0, err
    meta = read_results(tmp_path / "out")["meta"]
    assert meta["pruner_options"]["evtp:mode=global"] == {"spatial_weight": 0.5, "info_weight": 1.0, "temporal_scale": 1.0,
                                                          "temperature": 1.0, "mode": "global", "at": "llm-input"}
    assert meta["pruner_options"]["kcenter"] == {"temperature": 1.0}
    assert meta["dataset_options"]["synthetic-image:n=2"]["n"] == 2 and meta["dataset_options"]["synthetic-image:n=2"]["split"] == "test"
