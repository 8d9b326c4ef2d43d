"""CLI shell: `evtp list` and one-line errors with exit code 2."""

import subprocess
import sys

import pytest
from rich.text import Text

from evtp_cli.cli import main


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_list_shows_builtin_pruners_and_datasets(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for name in ["evtp", "kcenter", "divprune", "random", "uniform", "synthetic-image", "synthetic-video"]:
        assert name in out


def test_unknown_kind_is_one_line_exit_2(capsys):
    code, out, err = run_cli(capsys, "list", "gadgets")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "pruners, models, datasets" in lines[0] and "nor a registered name" in lines[0]
    assert "Traceback" not in err


def _registries():
    from evtp_cli.data import DATASETS
    from evtp_cli.models import MODELS
    from evtp_cli.pruners import PRUNERS

    return {"pruner": PRUNERS, "model": MODELS, "dataset": DATASETS}


def _registered():
    return [(kind, entry.name) for kind, registry in _registries().items() for entry in registry.entries()]


@pytest.mark.parametrize("kind,name", _registered())
def test_list_name_shows_every_option_with_its_default(capsys, kind, name):
    import dataclasses

    code, out, err = run_cli(capsys, "list", name)
    assert code == 0, err
    assert f"{kind} {name} —" in out
    config = _registries()[kind].load(name).Config
    fields = [f for f in dataclasses.fields(config) if f.init]
    text = out.split("\n", 1)[1]
    for f in fields:
        line = next((l for l in text.splitlines() if l.split() and l.split()[0] == f.name), None)
        assert line is not None, (f.name, out)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert line.rstrip().endswith("(required)")
        else:
            assert line.rstrip().endswith(repr(f.default) if isinstance(f.default, str) else str(f.default)), line
    if fields:  # the example is a spec the registry accepts (required values filled in)
        example = out.split("as a spec: ", 1)[1].split()[0]
        assert example.startswith(f"{name}:")
        _registries()[kind].config_of(example.replace("...", "x"))


def test_debug_shows_traceback(capsys):
    code, _, err = run_cli(capsys, "list", "gadgets", "--debug")
    assert code == 2 and "Traceback" in err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "evtp_cli", "list", "pruners"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "divprune" in out.stdout


def test_list_does_not_import_torch():
    code = "import sys; from evtp_cli.cli import main\ntry:\n    main(['list'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("False"), out.stdout + out.stderr


def test_results_table_is_printed_whole_in_80_columns(capsys, monkeypatch):
    """A pipe or log gets 80 columns; a long pruner spec must not cut a number or a header to "…"."""
    from evtp_cli.bench.tables import results_table
    from evtp_cli.cli import console, print_whole

    rows = [
        dict(model="tiny-ivs", dataset="synthetic-image", task="image", n_samples=200, pruner="none", ratio=1.0,
             tokens_kept=256, tokens_total=256, giou=0.977, ms_total=40.3, speedup=1.0),
        dict(model="sa2va-qwen:preset=tiny-random", dataset="synthetic-video:n=100,seed=5", task="video", n_samples=100,
             n_failed=3, pruner="evtp:spatial_weight=0.25,mode=global", ratio=0.2, tokens_kept=58, tokens_total=288,
             JF=0.9664, ms_total=1235.6, speedup=3.47),
    ]
    monkeypatch.setattr(console, "width", 80)
    print_whole(results_table(rows, title="evtp at keep ratio 0.2"))
    out = capsys.readouterr().out
    assert "…" not in out
    for text in ["speed-up", "3.47×", "1235.6", "0.966 J&F", "58/288", "100 (3 failed)", "0.20"]:
        assert text in out, text
    assert console.width == 80
    # a terminal keeps rich's fitting to its width (the user can widen the window)
    import io

    from rich.console import Console

    screen = io.StringIO()
    monkeypatch.setattr("evtp_cli.cli.console", Console(file=screen, force_terminal=True, width=60))
    print_whole(results_table(rows, title="evtp at keep ratio 0.2"))
    assert max(len(line) for line in Text.from_ansi(screen.getvalue()).plain.splitlines()) <= 60
    monkeypatch.undo()
    # two specs of one dataset are told apart; a single spec shows its bare name
    assert "synthetic-video:n=100,seed=5" not in out and "synthetic-video" in out
    twin = dict(rows[1], dataset="synthetic-video:n=100,seed=6", model="tiny-ivs")
    table = results_table([dict(rows[1], model="tiny-ivs"), twin])
    assert list(table.columns[0].cells) == ["synthetic-video:n=100,seed=5", "synthetic-video:n=100,seed=6"]


def test_sweep_takes_the_singular_option_names(capsys, tmp_path):
    """The issue names sweep-ratios' options --model, --datasets, --pruners, --ratios; both spellings work."""
    from evtp_cli.bench.results import read_results

    code, _, err = run_cli(capsys, "sweep-ratios", "--model", "tiny-ivs", "--dataset", "synthetic-image:n=2,size=32",
                           "--pruner", "uniform", "--pruner", "random", "--ratio", "0.5", "-o", str(tmp_path))
    assert code == 0, err
    rows = read_results(tmp_path)["rows"]
    assert [(r["pruner"], r["ratio"]) for r in rows] == [("none", 1.0), ("uniform", 0.5), ("random", 0.5)]
