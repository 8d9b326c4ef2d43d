"""What people read: sweep plots (ratio, Pareto), report.md, token maps, the coverage analysis, and the gate on a sweep."""

import json
import math
import os

import numpy as np
import pytest
import torch
from test_cli import run_cli as cli

from evtp_cli.bench.coverage import ALL_PRUNERS, spearman
from evtp_cli.bench.report import pareto_front
from evtp_cli.bench.results import read_results
from evtp_cli.cli import main

PNG = b"\x89PNG\r\n\x1a\n"
SWEEP = ["sweep-ratios", "-d", "synthetic-image:n=6,size=32", "-p", "uniform,random", "-r", "0.1,0.5"]



@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    with pytest.raises(SystemExit) as exc:
        main([*SWEEP, "-o", str(out)])
    assert exc.value.code == 0
    return out


def test_pareto_front():
    points = [(10.0, 0.5), (5.0, 0.4), (7.0, 0.3), (12.0, 0.5), (20.0, 0.6), (5.0, 0.2)]
    assert pareto_front(points) == [1, 0, 4]


def test_spearman():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert spearman(x, [10.0, 20.0, 30.0, 40.0, 50.0]) == pytest.approx(1.0)
    assert spearman(x, [5.0, 4.0, 3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert spearman(x, [1.0, 1.0, 1.0, 1.0, 1.0]) is None and spearman([1.0, 2.0], [2.0, 1.0]) is None
    # ties take average ranks: ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4)
    expected = np.corrcoef([1.5, 1.5, 3, 4], [1, 2, 3, 4])[0, 1]
    assert spearman([1.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(expected)


def test_sweep_writes_both_plots(sweep):
    for kind in ("accuracy_vs_ratio", "accuracy_vs_latency"):
        plots = list(sweep.glob(f"{kind}_*.png"))
        assert len(plots) == 1 and plots[0].read_bytes()[:8] == PNG


def test_table_md_holds_the_rows(sweep):
    """table.md: per model × dataset, pruners by keep ratio (ascending), 'accuracy (speed-up)' from the rows."""
    text = (sweep / "table.md").read_text()
    rows = read_results(sweep)["rows"]
    ref = next(r for r in rows if r["pruner"] == "none")
    assert f"### synthetic-image:n=6,size=32 · tiny-ivs — no pruning: gIoU {ref['giou']:.3f}, {ref['ms_total']:.1f} ms/sample" in text
    assert "| pruner | 0.1 | 0.5 |" in text
    for pruner in ("uniform", "random"):
        cells = [next(r for r in rows if r["pruner"] == pruner and r["ratio"] == ratio) for ratio in (0.1, 0.5)]
        line = f"| {pruner} | " + " | ".join(f"{r['giou']:.3f} ({r['speedup']:.2f}×)" for r in cells) + " |"
        assert line in text.splitlines(), (line, text)


def test_report_md(sweep, capsys):
    code, out, _ = cli(capsys, "report", str(sweep))
    assert code == 0
    text = (sweep / "report.md").read_text()
    assert text.startswith("# evtp results") and "## Accuracy by keep ratio" in text and "| uniform |" in text
    assert "pruners `uniform`, `random`; ratios 0.1, 0.5" in text  # what ran, for provenance
    assert "- **pruner options**: uniform; random (seed=0)" in text  # and what each name meant
    for link in [part.split(")")[0] for part in text.split("](")[1:]]:
        assert (sweep / link).is_file(), link
    rows = read_results(sweep)["rows"]
    uniform = next(r for r in rows if r["pruner"] == "uniform" and r["ratio"] == 0.5)
    assert f"{uniform['giou']:.3f}" in text


def test_report_versus_gives_the_rows_differences(sweep, capsys):
    code, _, err = cli(capsys, "report", str(sweep), "--versus", "uniform")
    assert code == 0, err
    text = (sweep / "report.md").read_text()
    assert "## Paired differences: uniform against each pruner" in text
    rows = {(r["pruner"], r["ratio"]): r for r in read_results(sweep)["rows"]}
    for ratio in (0.1, 0.5):
        # no sample failed, so the mean of per-sample differences is the difference of the rows' gIoU
        delta = rows[("uniform", ratio)]["giou"] - rows[("random", ratio)]["giou"]
        line = next(l for l in text.splitlines() if l.startswith(f"| {ratio:g} | random | 6 |"))
        assert line.split(" | ")[3] == f"{delta:+.3f}".replace("-0.000", "+0.000")


def test_report_versus_a_pruner_with_nothing_to_pair_says_so(sweep, tmp_path, capsys):
    code, _, err = cli(capsys, "prune-eval", "-d", "synthetic-image:n=2,size=32", "-p", "uniform", "-o", str(tmp_path))
    assert code == 0, err
    code, _, err = cli(capsys, "report", str(tmp_path), "--versus", "uniform")  # the only pruner of the run
    assert code == 0, err
    assert "Nothing to pair: no other pruner ran at the keep ratios of `uniform` on the same samples" in (tmp_path / "report.md").read_text()
    code, _, err = cli(capsys, "report", str(sweep))  # no --versus and no evtp in the run: no section
    assert code == 0, err
    assert "## Paired differences" not in (sweep / "report.md").read_text()


@pytest.mark.parametrize("versus", ["evtp", "none"])  # none: the reference runs at 1.0 only, nothing pairs with it
def test_report_versus_an_unknown_pruner_is_one_clear_line(sweep, capsys, versus):
    code, _, err = cli(capsys, "report", str(sweep), "--versus", versus)
    assert code == 2
    assert "not a pruner of this run; choose one of: random, uniform" in err and "Traceback" not in err


def test_coverage(sweep, capsys):
    code, out, err = cli(capsys, "coverage", str(sweep))
    assert code == 0, err
    import pandas as pd

    per_sample = pd.read_csv(sweep / "coverage.csv")
    assert len(per_sample) == 6 * 2 * 2  # samples × pruners × ratios (the reference has no kept set)
    summary = pd.read_csv(sweep / "coverage_summary.csv")
    assert set(summary["pruner"]) == {"uniform", "random", ALL_PRUNERS}
    # the radii are those of the kept sets: fewer kept tokens cover worse, and uniform's grid is the same on every image
    by = per_sample.groupby(["pruner", "ratio"])["radius_image"]
    assert by.mean()[("random", 0.1)] > by.mean()[("random", 0.5)]
    assert by.nunique()[("uniform", 0.1)] == 1
    # accuracy comes from the run's own records, and ρ from the ranks of these columns
    records = [json.loads(line) for line in (sweep / "samples.jsonl").read_text().splitlines()]
    iou = {(r["pruner"], r["ratio"], r["index"]): r["iou"] for r in records}
    assert all(math.isclose(a, iou[(p, r, i)]) for p, r, i, a in per_sample[["pruner", "ratio", "index", "accuracy"]].itertuples(index=False))
    pooled = summary[(summary["pruner"] == ALL_PRUNERS) & (summary["ratio"] == 0.1)].iloc[0]
    group = per_sample[per_sample["ratio"] == 0.1]
    expected = spearman(list(group["radius_feature"]), list(group["accuracy"]))
    assert (expected is None and math.isnan(pooled["rho_feature"])) or pooled["rho_feature"] == pytest.approx(expected)
    assert (sweep / "coverage.md").read_text().count("| random |") == 2
    assert list(sweep.glob("coverage_*.png"))[0].read_bytes()[:8] == PNG
    assert "ρ" in out
    code, _, _ = cli(capsys, "report", str(sweep))
    text = (sweep / "report.md").read_text()
    assert code == 0 and "## Coverage and accuracy" in text and "**Stale:**" not in text
    # newer files alone (a copy, a resume with nothing left to do) do not make it stale
    results = sweep / "results.json"
    os.utime(results, (results.stat().st_atime, (sweep / "coverage.md").stat().st_mtime + 10))
    assert cli(capsys, "report", str(sweep))[0] == 0 and "**Stale:**" not in (sweep / "report.md").read_text()
    # other finished samples than those analysed (here: one record fewer) do
    samples = sweep / "samples.jsonl"
    original = samples.read_text()
    samples.write_text("".join(original.splitlines(keepends=True)[:-1]))
    try:
        assert cli(capsys, "report", str(sweep))[0] == 0
        text = (sweep / "report.md").read_text()
        assert "**Stale:** computed from other finished samples than the run has now" in text and f"rerun `evtp coverage {sweep}`" in text
        assert "<!--" not in text  # the stamp is not shown
    finally:
        samples.write_text(original)


def test_coverage_radius_matches_an_independent_computation(sweep):
    """Radius of one recorded kept set, recomputed from scratch with the model's token coordinates."""
    import pandas as pd

    from evtp_cli.bench.evaluate import sample_seed
    from evtp_cli.data import load_dataset
    from evtp_cli.metrics.timing import StageTimer
    from evtp_cli.models import load_model
    from evtp_cli.pruners import get_pruner

    row = pd.read_csv(sweep / "coverage.csv").query("pruner == 'random' and ratio == 0.1").iloc[2]
    sample = load_dataset("synthetic-image:n=6,size=32")[int(row["index"])]
    tokens = load_model("tiny-ivs").encode(sample, StageTimer())
    context = tokens.context
    context.seed = sample_seed(0, sample.id)
    keep = get_pruner("random").select(tokens.features, tokens.coords, max(1, round(0.1 * tokens.count)), context)
    points = tokens.coords.double()
    brute = max(min(float(torch.linalg.norm(points[i] - points[j])) for j in keep.tolist()) for i in range(tokens.count))
    assert row["radius_image"] == pytest.approx(brute)


def test_visualize_png(tmp_path, capsys):
    path = tmp_path / "map.png"
    code, out, err = cli(capsys, "visualize", "-d", "synthetic-video:n=2,frames=3,size=32", "--sample", "1", "-p", "evtp,uniform",
                         "-r", "0.2", "-o", str(path))
    assert code == 0, err
    assert path.read_bytes()[:8] == PNG
    from PIL import Image

    # a grid of 3 columns (input + 2 pruners) × 2 rows: tiny-ivs shows its LLM the 3 frames as 2 frames of
    # tokens, pairs (0, 1) and (2, 2) (its temporal patch is 2)
    assert Image.open(path).size == (round(2.2 * 3 * 130), round((2.2 * 2 + 0.5) * 130))
    assert "evtp" in out and "uniform" in out and "token map" in out


def test_compare_gate_on_a_sweep(sweep, tmp_path, capsys):
    code, out, _ = cli(capsys, "compare", str(sweep), str(sweep))
    assert code == 0 and "no regression" in out
    data = read_results(sweep)
    row = next(r for r in data["rows"] if r["pruner"] == "uniform" and r["ratio"] == 0.5)
    row["giou"] -= 0.05
    (tmp_path / "results.json").write_text(json.dumps(data))
    code, out, _ = cli(capsys, "compare", str(sweep), str(tmp_path / "results.json"))
    assert code == 1 and "REGRESSION" in out


def test_coverage_skips_in_model_pruners_without_encoding(tmp_path, monkeypatch, capsys):
    """A run of in-LLM pruners only has no kept set chosen from the LLM input: nothing is encoded again."""
    from evtp_cli.bench.coverage import analyse
    from evtp_cli.models.tiny import TinyIVS

    with pytest.raises(SystemExit) as exc:
        main(["sweep-ratios", "-d", "synthetic-image:n=3,size=32", "-p", "fastv", "-r", "0.5", "-o", str(tmp_path)])
    assert exc.value.code == 0
    calls = []
    original = TinyIVS.encode
    monkeypatch.setattr(TinyIVS, "encode", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    result = analyse(tmp_path)
    assert calls == [] and len(result.samples) == 0 and "fastv" in result.skipped
    code, _, err = cli(capsys, "coverage", str(tmp_path))
    assert code == 2 and "fastv acts inside the model" in err and "selects before the LLM" in err
