"""benchmarks/token_geometry.py: the pair kinds by hand, and the script end to end on a few images."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from conftest import load_script


def test_pair_means_by_hand():
    geometry = load_script("token_geometry")
    # 5 tokens: 0, 1 background; 2, 3 object A's core; 4 half in object B (a core too)
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    distance = geometry.cosine_distances(features)
    assert distance[0, 2] == pytest.approx(0.5) and distance[0, 4] == pytest.approx(1.0) and distance[0, 1] == pytest.approx(0.0)
    inside = np.array([[0, 0, 1.0, 0.6, 0], [0, 0, 0, 0, 0.5]])
    found = geometry.pair_means(distance, inside)
    assert found["background-background"] == [pytest.approx(0.0)]  # the diagonal is left out
    assert found["object-background"] == [pytest.approx(0.5), pytest.approx(1.0)]  # A, then B
    assert found["same object"] == [pytest.approx(0.0), pytest.approx(0.0)]
    assert found["other object"] == [pytest.approx(0.5)]  # A's tokens against B's: (1 - 0)/2


def test_script_prints_each_place_and_refuses_videos(monkeypatch, capsys):
    geometry = load_script("token_geometry")
    monkeypatch.setattr(sys, "argv", ["token_geometry.py", "synthetic-image:n=2,size=32", "--model", "tiny-ivs"])
    geometry.main()
    out = capsys.readouterr().out
    assert "LLM input" in out and "encoder output" in out and "pixels" in out and "background-background" in out
    monkeypatch.setattr(sys, "argv", ["token_geometry.py", "synthetic-video:n=1"])
    with pytest.raises(SystemExit) as exit_:
        geometry.main()
    assert exit_.value.code == 2
