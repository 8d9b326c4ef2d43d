"""The fast selection paths return exactly the indices of the straightforward ones.

- `evtp_select` (batched greedy; on CPU rows built on demand, or whole score matrices for small
  selections: both forms are forced in turn by `cpu_form`) against `evtp_select_reference` (full
  matrices, plain greedy, frame by frame), on random images and videos, both modes, several λ/β/τ
  including 0 and 1, k from 1 to N-1, unequal and unsorted frames, duplicate tokens.
- The property that makes this exact rather than likely: a distance row built alone has the bits of
  the same row of the full matrix, and the batched greedy over weighted rows equals the plain one.
- DivPrune and kcenter, which share the fast greedy, against their references.
- The Triton kernel against the torch loop (CUDA only; skipped without it).
No test here measures time: the speed-ups are printed by benchmarks/bench_select.py.
"""

import json
import math

import pytest
import torch
from conftest import grid_coords, load_script

from evtp_cli.api import PruneContext, frame_index
from evtp_cli.pruners import evtp as evtp_module
from evtp_cli.pruners import get_pruner
from evtp_cli.pruners.divprune import divprune_reference
from evtp_cli.pruners.evtp import (
    allocate_budget,
    cosine_gram,
    evtp_select,
    evtp_select_reference,
    mix_distance,
    positions,
    token_information,
)
from evtp_cli.pruners.greedy import (
    greedy_farthest_point,
    greedy_over_matrix,
    greedy_rows,
    mask_self,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SETTINGS = [  # (spatial_weight λ, info_weight β, temporal_scale τ)
    (0.0, 0.0, 1.0),
    (0.5, 0.0, 1.0),
    (1.0, 0.0, 1.0),
    (0.3, 1.0, 2.0),
    (0.7, 0.5, 0.0),
    (1.0, 1.0, 0.5),
    (0.0, 1.0, 1.0),
]


def _sample(frames, h, w, d, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    coords = grid_coords(h, w, frames)
    feats = torch.randn(coords.shape[0], d, generator=g)
    return feats.to(device), coords.to(device)


def _both(feats, coords, k, frame_ids, lam, beta, tau, mode, **fast):
    kw = dict(spatial_weight=lam, info_weight=beta, temporal_scale=tau, mode=mode)
    return evtp_select(feats, coords, k, frame_ids, **kw, **fast), evtp_select_reference(feats, coords, k, frame_ids, **kw)


# ---------------------------------------------------------------------------------------------
# EVTP: fast == reference


@pytest.fixture(params=["rows", "matrix"])
def cpu_form(request, monkeypatch):
    """Force the CPU fast path's form, whatever the size: rows built on demand, or whole score matrices."""
    monkeypatch.setattr(evtp_module, "CPU_MATRIX_ENTRIES_PER_STEP", 0 if request.param == "rows" else 1 << 40)
    return request.param


@pytest.mark.parametrize("frames,h,w,d", [(1, 6, 7, 16), (1, 12, 12, 64), (3, 5, 5, 32), (6, 6, 6, 24)])
@pytest.mark.parametrize("mode", ["global", "per-frame"])
@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.usefixtures("cpu_form")
def test_evtp_fast_equals_reference(frames, h, w, d, mode, setting):
    lam, beta, tau = setting
    for seed in range(2):
        feats, coords = _sample(frames, h, w, d, seed)
        n = feats.shape[0]
        frame_ids = frame_index(coords)
        for k in (1, n // 5, n - 1):
            fast, ref = _both(feats, coords, k, frame_ids, lam, beta, tau, mode)
            assert fast.tolist() == ref.tolist(), (seed, k)


@pytest.mark.parametrize("mode", ["global", "per-frame"])
@pytest.mark.usefixtures("cpu_form")
def test_evtp_fast_equals_reference_at_video_scale(mode):
    """16 frames of 64 tokens (N = 1024), keep 20%: long enough for near-ties to occur often."""
    for seed, (lam, beta, tau) in enumerate([(0.5, 0.0, 1.0), (0.2, 1.0, 3.0)]):
        feats, coords = _sample(16, 8, 8, 96, seed)
        fast, ref = _both(feats, coords, 205, frame_index(coords), lam, beta, tau, mode)
        assert fast.tolist() == ref.tolist()


@pytest.mark.usefixtures("cpu_form")
def test_evtp_fast_equals_reference_at_benchmark_scale():
    """The benchmark's video (16 x 256 tokens, keep 819) in global mode, with a narrower d to stay quick."""
    feats, coords = _sample(16, 16, 16, 64, seed=7)
    fast, ref = _both(feats, coords, 819, frame_index(coords), 0.5, 0.0, 1.0, "global")
    assert fast.tolist() == ref.tolist()


@pytest.mark.parametrize("mode", ["global", "per-frame"])
@pytest.mark.usefixtures("cpu_form")
def test_evtp_unequal_unsorted_frames(mode):
    """Frames of different sizes, interleaved in the input (frame ids from the context): padding path."""
    g = torch.Generator().manual_seed(3)
    frame_ids = torch.tensor([2, 0, 1, 2, 2, 0, 1, 1, 2, 0, 2, 1, 2, 2, 0, 2, 7, 7, 2, 0] * 3)
    n = frame_ids.numel()
    coords = torch.rand(n, 3, generator=g)
    feats = torch.randn(n, 12, generator=g)
    for k in (1, 3, 4, 9, 31, n - 1):
        for lam, beta, tau in SETTINGS[1::2]:
            fast, ref = _both(feats, coords, k, frame_ids, lam, beta, tau, mode)
            assert fast.tolist() == ref.tolist(), (k, lam, beta, tau)
            if mode == "per-frame":  # each frame gets exactly its budget
                ids = torch.unique(frame_ids).tolist()
                sizes = [int((frame_ids == f).sum()) for f in ids]
                masses = [float((token_information(feats)[frame_ids == f] + 0.05).sum()) for f in ids]
                assert [int((frame_ids[fast] == f).sum()) for f in ids] == allocate_budget(k, sizes, masses)


@pytest.mark.parametrize("mode", ["global", "per-frame"])
@pytest.mark.usefixtures("cpu_form")
def test_evtp_duplicate_tokens_and_exact_ties(mode):
    """Repeated features on an exact grid (tied spatial distances): same picks, unique indices."""
    g = torch.Generator().manual_seed(11)
    coords = grid_coords(6, 6, 2)
    base = torch.randn(5, 8, generator=g)
    feats = base[torch.arange(coords.shape[0]) % 5]  # every feature 14 or 15 times
    frame_ids = frame_index(coords)
    for lam, beta, tau in SETTINGS:
        for k in (1, 5, 6, 30, 71):
            fast, ref = _both(feats, coords, k, frame_ids, lam, beta, tau, mode)
            assert fast.tolist() == ref.tolist(), (lam, beta, tau, k)
            assert torch.unique(fast).numel() == k


@pytest.mark.parametrize("frames,side,k,form", [(1, 16, 51, "matrix"), (1, 32, 205, "rows"), (16, 16, 819, "rows")])
def test_cpu_form_by_default(monkeypatch, frames, side, k, form):
    """Which form the default threshold takes: tiny-ivs's 256 tokens at 20 % the whole matrix; a 1024-token
    image at 20 % and the benchmark's per-frame video rows built on demand (docs/performance.md)."""
    used = []
    for name in ("_score_matrix", "_score_rows"):
        real = getattr(evtp_module, name)
        monkeypatch.setattr(evtp_module, name, lambda p, real=real, name=name: used.append(name) or real(p))
    feats, coords = _sample(frames, side, side, 8, seed=0)
    evtp_select(feats, coords, k, frame_index(coords))
    assert used == ["_score_matrix" if form == "matrix" else "_score_rows"]


def test_evtp_all_identical_tokens_pick_in_index_order():
    """All distances 0: every step ties, and ties go to the lowest index not yet chosen."""
    coords = torch.zeros(20, 3)
    feats = torch.ones(20, 4)
    keep = evtp_select(feats, coords, 7, torch.zeros(20, dtype=torch.long), mode="global")
    assert keep.tolist() == list(range(7))
    assert evtp_select_reference(feats, coords, 7, torch.zeros(20, dtype=torch.long), mode="global").tolist() == list(range(7))


@pytest.mark.usefixtures("cpu_form")
def test_evtp_adapter_uses_fast_path():
    feats, coords = _sample(4, 6, 6, 16, seed=5)
    ctx = PruneContext()
    for mode in ("global", "per-frame"):
        keep = get_pruner("evtp", mode=mode, info_weight=0.5).select(feats, coords, 29, ctx)
        ref = evtp_select_reference(feats, coords, 29, frame_index(coords, ctx), info_weight=0.5, mode=mode)
        assert keep.tolist() == sorted(ref.tolist())


# ---------------------------------------------------------------------------------------------
# the per-frame rule against an independent float64 transcription


def _reference_per_frame(feats, coords, k, lam, beta):
    """Per-frame EVTP in float64: budget by information mass, then (y, x) k-center inside each frame."""
    f = feats.double()
    p = torch.softmax(f, dim=1)
    h = -(p * p.log()).sum(1) / math.log(f.shape[1])
    h = (h - h.min()) / (h.max() - h.min())
    unit = f / f.norm(dim=1, keepdim=True)
    frames = torch.unique(coords[:, 0]).tolist()
    members = [torch.nonzero(coords[:, 0] == t).flatten().tolist() for t in frames]
    budget = allocate_budget(k, [len(m) for m in members], [float((h[m] + 0.05).sum()) for m in members])
    picked = []
    for m, kf in zip(members, budget):
        if kf == 0:
            continue

        def dist(i, j):
            pos = math.dist(coords[i, 1:].tolist(), coords[j, 1:].tolist()) / math.sqrt(2)
            return (1 - lam) * (1 - float(unit[i] @ unit[j])) / 2 + lam * pos

        chosen = [max(m, key=lambda i: (float(h[i]), -i))]
        while len(chosen) < kf:
            chosen.append(max((i for i in m if i not in chosen), key=lambda i: ((1 + beta * float(h[i])) * min(dist(i, j) for j in chosen), -i)))
        picked += chosen
    return sorted(picked)


@pytest.mark.parametrize("lam,beta", [(0.5, 0.0), (0.3, 1.0), (1.0, 0.5), (0.0, 0.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_evtp_per_frame_matches_formula(lam, beta, seed):
    feats, coords = _sample(3, 4, 5, 8, seed)
    # jitter the grid: on an exact grid, spatial distances tie and float rounding picks among equals
    coords[:, 1:] += 0.01 * torch.rand(coords.shape[0], 2, generator=torch.Generator().manual_seed(seed))
    got = get_pruner("evtp", spatial_weight=lam, info_weight=beta, mode="per-frame").select(feats, coords, 10)
    assert got.tolist() == _reference_per_frame(feats, coords, 10, lam, beta)


# ---------------------------------------------------------------------------------------------
# the two properties the identity rests on


@pytest.mark.parametrize("n,d,with_time", [(42, 16, False), (300, 33, True), (1100, 24, True)])
@pytest.mark.parametrize("array", ["numpy", "torch"])
def test_distance_rows_have_the_bits_of_the_full_matrix(n, d, with_time, array):
    """numpy is what CPU selection uses; torch is what it uses on CUDA."""
    g = torch.Generator().manual_seed(n)
    feats, coords = torch.randn(n, d, generator=g), torch.rand(n, 3, generator=g)
    unit = torch.nn.functional.normalize(feats, dim=-1)[None]
    conv = (lambda t: t.numpy()) if array == "numpy" else (lambda t: t)
    for lam in (0.0, 0.37, 1.0):
        points, half, scale = positions(coords, lam, 1.7, with_time)
        pts = conv(points[:, None])  # [P, 1, n]
        full = mix_distance(conv(cosine_gram(unit)), pts[..., :, None], pts[..., None, :], half, scale)
        gram = cosine_gram(unit)
        for i in torch.randint(0, n, (25,), generator=g).tolist():
            one = mix_distance(conv(gram[:, i].clone()), pts[:, :, i, None], pts, half, scale)
            assert (one[0] == full[0, i]).all()


def test_symmetric_gram_matches_plain_product_values():
    """The mirrored block Gram is exactly symmetric and within rounding of u @ uᵀ."""
    u = torch.nn.functional.normalize(torch.randn(1100, 20, generator=torch.Generator().manual_seed(0)), dim=-1)
    g = cosine_gram(u[None])[0]
    assert torch.equal(g, g.T)
    torch.testing.assert_close(g, u @ u.T, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_batched_greedy_equals_plain_greedy_with_ties_and_weights(seed):
    g = torch.Generator().manual_seed(seed)
    batch, n, steps = 5, 40, 39
    dist = torch.randint(0, 4, (batch, n, n), generator=g).float() / 3  # coarse values: ties at every step
    weights = 1 + torch.randint(0, 3, (batch, n), generator=g).float() / 7
    first = torch.randint(0, n, (batch,), generator=g)
    scores = mask_self(dist * weights[:, None, :])
    for picks in (greedy_over_matrix(scores.clone(), first, steps, backend="torch"), greedy_rows(lambda i: scores[torch.arange(batch), i], first, steps)):
        for b in range(batch):
            assert picks[b].tolist() == greedy_farthest_point(dist[b], steps, int(first[b]), weights[b]).tolist()


# ---------------------------------------------------------------------------------------------
# DivPrune and kcenter share the fast greedy


@pytest.mark.parametrize("n,d,k", [(300, 32, 60), (100, 32, 99), (257, 8, 90)])
def test_divprune_fast_equals_published_loop(n, d, k):
    feats = torch.randn(n, d, generator=torch.Generator().manual_seed(n + k))
    keep = get_pruner("divprune").select(feats, torch.zeros(n, 3), k)
    assert keep.tolist() == sorted(divprune_reference(feats, k).tolist())


def test_divprune_fast_with_duplicates():
    feats = torch.randn(6, 10, generator=torch.Generator().manual_seed(2))[torch.arange(60) % 6]
    keep = get_pruner("divprune").select(feats, torch.zeros(60, 3), 6)
    assert keep.tolist() == sorted(divprune_reference(feats, 6).tolist())


@pytest.mark.parametrize("n,repeat", [(2, False), (3, True), (60, False), (60, True)])
def test_divprune_first_is_argmax_of_second_smallest(n, repeat):
    from evtp_cli.pruners.divprune import cosine_distance_matrix, divprune_first

    feats = torch.randn(n, 6, generator=torch.Generator().manual_seed(n))
    if repeat:  # every token twice or more: the 2nd smallest of a column is then its minimum again
        feats = feats[torch.arange(n) % max(1, n // 3)]
    dist = cosine_distance_matrix(feats)
    before = dist.clone()
    expected = int(torch.argmax(torch.topk(dist, 2, dim=0, largest=False).values[1]))
    assert divprune_first(dist) == expected
    assert torch.equal(dist, before)


def test_kcenter_equals_evtp_reference_without_space_and_information():
    feats, coords = _sample(4, 8, 8, 24, seed=9)
    keep = get_pruner("kcenter").select(feats, coords, 51)
    ref = evtp_select_reference(feats, coords, 51, frame_index(coords), spatial_weight=0.0, info_weight=0.0, mode="global")
    assert keep.tolist() == sorted(ref.tolist())


# ---------------------------------------------------------------------------------------------
# the benchmark script runs (tiny sizes; it prints numbers, nothing here checks them)


def test_bench_select_runs_and_reports_json(capsys):
    bench = load_script("bench_select")
    assert bench.main(["--json", "--image-tokens", "36", "--frames", "2", "--frame-tokens", "16", "--dims", "8", "--repeats", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    methods = {r["method"] for r in out["rows"]}
    assert {"evtp", "evtp:mode=global", "DivPrune rule (reference)"} <= methods
    assert all(r["median_ms"] is not None or r["note"] for r in out["rows"])
    assert {s["method"] for s in out["speedups"]} == {"evtp", "evtp:mode=global"}


# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)


@cuda
@pytest.mark.parametrize("mode", ["global", "per-frame"])
@pytest.mark.parametrize("setting", SETTINGS[:4])
def test_cuda_fast_equals_reference(mode, setting):
    lam, beta, tau = setting
    for frames, h, w, d in [(1, 16, 16, 64), (16, 16, 16, 256)]:
        feats, coords = _sample(frames, h, w, d, seed=frames, device="cuda")
        n = feats.shape[0]
        for k in (1, n // 5, n - 1):
            fast, ref = _both(feats, coords, k, frame_index(coords), lam, beta, tau, mode)
            assert fast.tolist() == ref.tolist(), (frames, k)


@cuda
def test_cuda_triton_equals_torch_loop():
    from evtp_cli.pruners import _triton_greedy

    if _triton_greedy.triton is None:
        pytest.skip("Triton is not installed")
    feats, coords = _sample(16, 16, 16, 128, seed=1, device="cuda")
    for mode in ("global", "per-frame"):
        a = evtp_select(feats, coords, 819, frame_index(coords), info_weight=0.5, mode=mode, backend="triton")
        b = evtp_select(feats, coords, 819, frame_index(coords), info_weight=0.5, mode=mode, backend="torch")
        assert a.tolist() == b.tolist()


@cuda
def test_cuda_divprune_fast_equals_plain_greedy():
    from evtp_cli.pruners.divprune import cosine_distance_matrix, divprune_first

    torch.manual_seed(0)
    feats = torch.randn(1024, 64, device="cuda")
    dist = cosine_distance_matrix(feats)
    ref = greedy_farthest_point(dist, 205, divprune_first(dist))
    keep = get_pruner("divprune").select(feats, torch.zeros(1024, 3, device="cuda"), 205)
    assert keep.tolist() == sorted(ref.tolist())
