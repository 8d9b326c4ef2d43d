"""The pruner contract, checked for every registered pruner, plus each method against its rule."""

import math

import pytest
import torch
from conftest import grid_coords

from evtp_cli.api import PruneContext, keep_count
from evtp_cli.errors import PrunerNotApplicable, SpecError
from evtp_cli.pruners import PRUNERS, get_pruner, list_pruners
from evtp_cli.pruners.divprune import divprune_reference
from evtp_cli.pruners.evtp import allocate_budget
from evtp_cli.pruners.greedy import covering_radius

ALL = list_pruners()
# methods acting inside a model read what only a backend gives (encoder attention/keys, the LLM's state):
# with a bare context they must refuse; tests/test_baselines.py checks their contract with such a context
IN_MODEL = {name for name in ALL if getattr(PRUNERS.load(name), "stage", "pre-llm") != "pre-llm"}


def _refuses_bare_context(name, feats, coords, k, context):
    if name not in IN_MODEL:
        return False
    with pytest.raises(PrunerNotApplicable):
        get_pruner(name).select(feats, coords, k, context)
    return True


def _inputs(frames=1, h=6, w=7, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    coords = grid_coords(h, w, frames)
    feats = torch.randn(coords.shape[0], d, generator=g)
    return feats, coords


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("frames", [1, 3])
@pytest.mark.parametrize("k", [1, 5, 17])
def test_contract_k_unique_sorted(name, frames, k):
    feats, coords = _inputs(frames)
    if _refuses_bare_context(name, feats, coords, k, PruneContext(seed=3)):
        pytest.skip("needs a backend context; contract checked in test_baselines.py")
    pruner = get_pruner(name)
    keep = pruner.select(feats, coords, k, PruneContext(seed=3))
    assert keep.dtype == torch.long
    assert keep.shape == (k,)
    assert torch.equal(keep, torch.sort(keep).values)
    assert torch.unique(keep).numel() == k
    assert int(keep.min()) >= 0 and int(keep.max()) < feats.shape[0]


@pytest.mark.parametrize("name", ALL)
def test_contract_deterministic(name):
    feats, coords = _inputs(frames=2)
    if _refuses_bare_context(name, feats, coords, 9, PruneContext(seed=5)):
        pytest.skip("needs a backend context; contract checked in test_baselines.py")
    a = get_pruner(name).select(feats, coords, 9, PruneContext(seed=5))
    b = get_pruner(name).select(feats.clone(), coords.clone(), 9, PruneContext(seed=5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ALL)
def test_contract_k_equals_n_keeps_all(name):
    feats, coords = _inputs()
    keep = get_pruner(name).select(feats, coords, feats.shape[0])
    assert torch.equal(keep, torch.arange(feats.shape[0]))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("k", [0, -1, 43, 2.0, True])
def test_contract_bad_k_rejected(name, k):
    feats, coords = _inputs()  # N = 42
    with pytest.raises(ValueError, match="k"):
        get_pruner(name).select(feats, coords, k)


@pytest.mark.parametrize("name", ALL)
def test_contract_bad_inputs_rejected(name):
    feats, coords = _inputs()
    pruner = get_pruner(name)
    bad = feats.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pruner.select(bad, coords, 4)
    with pytest.raises(ValueError, match="coords"):
        pruner.select(feats, coords[:-1], 4)
    with pytest.raises(ValueError, match="coords"):
        pruner.select(feats, coords[:, :2], 4)
    with pytest.raises(ValueError, match="2-D"):
        pruner.select(feats[None], coords, 4)


def test_unknown_names_and_keys_list_the_known():
    with pytest.raises(SpecError, match="known pruners: " + ", ".join(ALL[:3])):
        get_pruner("nope")
    with pytest.raises(SpecError, match="known options: spatial_weight"):
        get_pruner("evtp:lambda=0.3")
    with pytest.raises(SpecError, match="spatial_weight must be in"):
        get_pruner("evtp:spatial_weight=1.5")


def test_spec_string_and_keywords_agree():
    a = get_pruner("evtp:spatial_weight=0.3,mode=global")
    b = get_pruner("evtp", spatial_weight=0.3, mode="global")
    assert a.config == b.config


@pytest.mark.parametrize("ratio,n,k", [(0.2, 256, 51), (0.05, 10, 1), (1.0, 7, 7), (0.001, 100, 1)])
def test_keep_count(ratio, n, k):
    assert keep_count(ratio, n) == k


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.01, float("nan")])
def test_keep_count_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError):
        keep_count(ratio, 10)


# ---------------------------------------------------------------------------------------------
# rules, against straightforward independent implementations


def _reference_evtp(feats, coords, k, lam, beta, tau, temperature=1.0):
    """Entry-by-entry float64 transcription of the documented EVTP formula (global mode)."""
    f = feats.double()
    n, d = f.shape
    unit = f / f.norm(dim=1, keepdim=True)
    is_video = len(set(coords[:, 0].tolist())) > 1
    norm = math.sqrt(2 + (tau**2 if is_video else 0))
    p = torch.softmax(f / temperature, dim=1)
    h = -(p * p.log()).sum(1) / math.log(d)
    h = (h - h.min()) / (h.max() - h.min())

    def dist(i, j):
        cos = float(unit[i] @ unit[j])
        dt, dy, dx = (coords[i] - coords[j]).double().tolist()
        pos = math.sqrt((tau * dt) ** 2 + dy**2 + dx**2) / norm
        return (1 - lam) * (1 - cos) / 2 + lam * pos

    chosen = [int(torch.argmax(h))]
    while len(chosen) < k:
        best, best_score = None, -1.0
        for i in range(n):
            if i in chosen:
                continue
            score = (1 + beta * float(h[i])) * min(dist(i, j) for j in chosen)
            if score > best_score:
                best, best_score = i, score
        chosen.append(best)
    return sorted(chosen)


@pytest.mark.parametrize("lam,beta,tau,frames", [(0.0, 0.0, 1.0, 1), (0.5, 0.0, 1.0, 1), (0.3, 1.0, 1.0, 1), (0.6, 0.5, 2.0, 3), (1.0, 0.0, 0.5, 2)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evtp_global_matches_formula(lam, beta, tau, frames, seed):
    feats, coords = _inputs(frames=frames, h=4, w=5, d=8, seed=seed)
    # jitter the grid: on an exact grid, spatial distances tie and float rounding picks among equals
    coords[:, 1:] += 0.01 * torch.rand(coords.shape[0], 2, generator=torch.Generator().manual_seed(seed))
    k = 7
    got = get_pruner("evtp", spatial_weight=lam, info_weight=beta, temporal_scale=tau, mode="global").select(feats, coords, k)
    assert got.tolist() == _reference_evtp(feats, coords, k, lam, beta, tau)


def test_evtp_per_frame_selects_within_frames_by_budget():
    feats, coords = _inputs(frames=4, h=5, w=5)
    frame_of = torch.unique(coords[:, 0], return_inverse=True)[1]
    pruner = get_pruner("evtp", mode="per-frame", spatial_weight=0.5)
    keep = pruner.select(feats, coords, 22)
    counts = torch.bincount(frame_of[keep], minlength=4)
    assert int(counts.sum()) == 22 and int(counts.min()) >= 1
    # each frame's picks equal an image-mode selection on that frame alone with the same budget
    for f in range(4):
        idx = torch.nonzero(frame_of == f).flatten()
        single = pruner.select(feats[idx], coords[idx] * torch.tensor([0.0, 1, 1]), int(counts[f]))
        # per-frame information is scaled over the whole sample, so compare the seed-free part: sizes
        assert single.numel() == int(counts[f])


def test_kcenter_is_evtp_without_space_and_information():
    feats, coords = _inputs(frames=2)
    a = get_pruner("kcenter").select(feats, coords, 11)
    b = get_pruner("evtp", spatial_weight=0.0, info_weight=0.0, mode="global").select(feats, coords, 11)
    assert torch.equal(a, b)


@pytest.mark.parametrize("seed", range(5))
def test_divprune_matches_published_loop(seed):
    feats, coords = _inputs(h=8, w=8, seed=seed)
    keep = get_pruner("divprune").select(feats, coords, 13)
    assert keep.tolist() == sorted(divprune_reference(feats, 13).tolist())


def test_divprune_first_pick_is_most_isolated_token():
    # three tight pairs and one loner: the loner has the largest nearest-neighbour distance
    base = torch.tensor([[1.0, 0, 0], [0.99, 0.1, 0], [0, 1.0, 0], [0.1, 0.99, 0], [0, 0, 1.0], [0, 0.1, 0.99], [0.6, 0.6, -0.5]])
    coords = torch.zeros(7, 3)
    keep = get_pruner("divprune").select(base, coords, 1)
    assert keep.tolist() == [6]


def test_random_uses_per_sample_seed():
    feats, coords = _inputs()
    p = get_pruner("random")
    assert not torch.equal(p.select(feats, coords, 10, PruneContext(seed=1)), p.select(feats, coords, 10, PruneContext(seed=2)))


def test_uniform_hand_case_even_grid():
    coords = grid_coords(4, 4)
    feats = torch.zeros(16, 4) + 1.0
    keep = get_pruner("uniform").select(feats, coords, 4)
    # a 2x2 lattice on a 4x4 grid: cell centres (0.25, 0.75) fall between tokens; ties go to the lower index
    assert keep.tolist() == [0, 2, 8, 10]
    keep = get_pruner("uniform").select(torch.ones(32, 4), grid_coords(4, 4, frames=2), 8)
    assert keep.tolist() == [0, 2, 8, 10, 16, 18, 24, 26]


@pytest.mark.parametrize(
    "k,sizes,info,expected",
    [(10, [5, 5], [1.0, 1.0], [5, 5]), (4, [10, 10], [3.0, 1.0], [3, 1]), (6, [2, 10], [10.0, 1.0], [2, 4]), (2, [3, 3, 3], [1, 1, 1], [1, 1, 0])],
)
def test_allocate_budget(k, sizes, info, expected):
    alloc = allocate_budget(k, sizes, info)
    assert alloc == expected
    assert sum(alloc) == k and all(a <= s for a, s in zip(alloc, sizes))


def _clustered_scene(seed):
    """Features of a few objects on a background, laid on a 16 x 16 grid (one feature per region)."""
    g = torch.Generator().manual_seed(seed)
    h = w = 16
    coords = grid_coords(h, w)
    protos = torch.randn(5, 32, generator=g) * 3
    label = torch.zeros(h, w, dtype=torch.long)
    for obj in range(1, 5):
        y, x = torch.randint(0, h - 4, (2,), generator=g).tolist()
        label[y : y + 4, x : x + 4] = obj
    feats = protos[label.flatten()] + 0.05 * torch.randn(h * w, 32, generator=g)
    return feats, coords


@pytest.mark.parametrize("seed", range(5))
def test_evtp_covers_space_better_than_kcenter(seed):
    feats, coords = _clustered_scene(seed)
    k = 26
    yx = coords[:, 1:]
    r_evtp = covering_radius(yx, get_pruner("evtp").select(feats, coords, k))
    r_kcenter = covering_radius(yx, get_pruner("kcenter").select(feats, coords, k))
    assert r_evtp < r_kcenter


def test_registry_lists_builtins():
    for name in ["evtp", "kcenter", "divprune", "random", "uniform"]:
        assert name in PRUNERS
