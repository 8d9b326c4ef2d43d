"""docs/extending.md: its example plug-in pruner, taken from the page, registered through an entry point
exactly as the page says, then listed, evaluated end to end and checked by hand."""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

import pytest
import torch
from test_cli import run_cli

from evtp_cli.pruners import PRUNERS, get_pruner

PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), flags=re.S)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The page's pruner as an installed package would expose it: its module importable, its entry point
    in the group the page names, and the registry reading entry points afresh (restored afterwards)."""
    (code,) = _blocks("python")
    (toml,) = _blocks("toml")
    group = re.search(r'\[project\.entry-points\."([^"]+)"\]', toml).group(1)
    name, value = re.search(r'^(\S+) = "([^"]+)"$', toml, flags=re.M).groups()
    module = value.partition(":")[0]
    package_dir = tmp_path / "site" / Path(*module.split(".")).parent
    package_dir.mkdir(parents=True)
    (package_dir / "__init__.py").write_text("")
    (package_dir / f"{module.rsplit('.', 1)[1]}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    found = [importlib.metadata.EntryPoint(name=name, value=value, group=group)]
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [ep for ep in found if ep.group == kw.get("group")] or real(**kw))
    monkeypatch.setattr(PRUNERS, "_entries", dict(PRUNERS._entries))
    monkeypatch.setattr(PRUNERS, "_entry_points_loaded", False)
    return name


def test_the_page_names_the_registry_group():
    (toml,) = _blocks("toml")
    assert f'[project.entry-points."{PRUNERS.entry_point_group}"]' in toml


def test_plugin_pruner_by_hand(plugin):
    features = torch.zeros(6, 4)
    features[:, 0] = torch.tensor([3.0, 1.0, 5.0, 0.5, 4.0, 2.0])
    coords = torch.zeros(6, 3)
    assert get_pruner(plugin).select(features, coords, 3).tolist() == [0, 2, 4]  # norms 3, 5, 4; sorted indices
    assert get_pruner(f"{plugin}:largest=false").select(features, coords, 2).tolist() == [1, 3]


def test_plugin_pruner_is_listed_and_runs(plugin, capsys, tmp_path):
    code, out, err = run_cli(capsys, "list", plugin)
    assert code == 0 and "largest" in out, err
    code, out, err = run_cli(capsys, "prune-eval", "-p", plugin, "-n", "2", "-o", str(tmp_path / "run"))
    assert code == 0, err
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["rows"]
    row = next(r for r in rows if r["pruner"] == plugin)
    assert row["n_samples"] == 2 and row["tokens_kept"] == round(0.2 * row["tokens_total"]) and row["giou"] is not None
