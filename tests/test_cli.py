"""CLI shell: `evtp list` and one-line errors with exit code 2."""

import subprocess
import sys

import pytest

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
    assert len(lines) == 1 and "pruners, models, datasets" in lines[0]
    assert "Traceback" not in err


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
