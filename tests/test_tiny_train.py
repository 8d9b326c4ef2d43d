"""tiny-ivs training: a few steps on a fixed batch lower the loss, in both stages (no full retraining);
the temporal patch (frames merged per LLM token) by hand, in training and in the model."""

import pytest
import torch

from evtp_cli.data.synthetic import VOCABULARY
from evtp_cli.models.tiny_net import TinyArch, TinyIVSNet
from evtp_cli.models.tiny_train import make_batch, stage1_step, stage2_step


def _fit(net, step_fn, batch, steps=8, lr=3e-3):
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    losses = []
    for _ in range(steps):
        out = step_fn(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    return losses


def _small_net(temporal_patch: int = 1):
    torch.manual_seed(0)
    arch = TinyArch(vocab=list(VOCABULARY), vision_dim=32, llm_dim=32, llm_layers=1, llm_mlp=64, pointer_dim=16, temporal_patch=temporal_patch)
    return TinyIVSNet(arch)


def test_stage1_loss_goes_down():
    net = _small_net()
    batch = make_batch([11, 0, 0], 0, batch=3, size=32, frames=1, max_objects=3, key_frames="1")
    gen = torch.Generator().manual_seed(0)
    losses = _fit(net, lambda b: stage1_step(net, b, gen), batch)
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("temporal_patch", [1, 2])
def test_stage2_loss_goes_down_on_video(temporal_patch):
    net = _small_net(temporal_patch)
    for module in (net.vision, net.mask_head, net.attributes):
        module.requires_grad_(False)
    batch = make_batch([11, 1, 0], 0, batch=2, size=32, frames=4, max_objects=3, key_frames="first-2")
    losses = _fit(net, lambda b: stage2_step(net, b), batch, steps=10)
    assert losses[-1] < 0.8 * losses[0]


def test_pointer_targets_by_hand():
    from evtp_cli.models.tiny_train import pointer_targets

    # 2 key frames of 3 tokens; sample 0's target (object 1) owns token 1 of frame 0 and token 2 of frame 1;
    # sample 1's target (object 0) owns no token but touches token 0 of frame 0 only
    owner = torch.tensor([[[-1, 1, 0], [0, -1, 1]], [[-1, -1, -1], [-1, 1, -1]]])
    cov = torch.zeros(2, 2, 2, 3)
    cov[1, 0, 0, 0] = 0.3
    targets = torch.tensor([1, 0])
    assert pointer_targets(owner, cov, targets).tolist() == [
        [False, True, False, False, False, True],
        [True, False, False, False, False, False],
    ]
    # later frames only: sample 0 keeps its frame-1 token; sample 1 has none there, so keeps what it had
    assert pointer_targets(owner, cov, targets, point_later=True).tolist() == [
        [False, False, False, False, False, True],
        [True, False, False, False, False, False],
    ]


def test_group_frames_by_hand():
    from evtp_cli.models.tiny_net import group_frames, group_starts

    tokens = torch.tensor([[[10.0 * f + n] for n in range(2)] for f in range(3)])  # [F=3, N=2, C=1]: 10·frame + token
    assert torch.equal(group_frames(tokens, 1), tokens)
    # frames (0, 1) side by side, then frame 2 with itself repeated
    assert group_frames(tokens, 2).tolist() == [[[0.0, 10.0], [1.0, 11.0]], [[20.0, 20.0], [21.0, 21.0]]]
    assert group_frames(tokens[None], 2).shape == (1, 2, 2, 2)  # leading batch dimensions pass through
    assert group_starts([0, 1, 2, 3], 2) == [0, 2] and group_starts([5], 2) == [5]


def test_widened_projector_projects_a_single_frame_as_before():
    from evtp_cli.models.tiny_train import with_temporal_patch

    net = _small_net()
    wide = with_temporal_patch(net, 2)
    assert wide.arch.temporal_patch == 2 and wide.projector.net[0].in_features == 2 * net.arch.vision_dim
    tokens = torch.randn(3, 5, net.arch.vision_dim)  # 3 frames, each projected on its own (an image repeats its frame)
    with torch.no_grad():
        assert torch.allclose(wide.project(tokens[:, None])[:, 0], net.project(tokens[:, None])[:, 0], atol=1e-6)
        assert torch.equal(wide.llm.blocks[0].q.weight, net.llm.blocks[0].q.weight)


def test_model_with_temporal_patch_merges_key_frame_pairs(tmp_path):
    """tiny-ivs built with temporal_patch=2: 4 key frames reach the LLM as 2 frames of tokens, which the
    pruner context, the coordinates and the mask prompt all follow."""
    from evtp_cli.api import PrunePlan
    from evtp_cli.data import load_dataset
    from evtp_cli.metrics.timing import StageTimer
    from evtp_cli.models import load_model
    from evtp_cli.models.tiny_train import save

    path = tmp_path / "tp2.safetensors"
    save(_small_net(2), path, {"stage": 2})
    model = load_model(f"tiny-ivs:weights={path}")
    video = load_dataset("synthetic-video:n=1,frames=6,size=32")[0]
    tokens = model.encode(video, StageTimer())
    per_frame = (32 // 4) ** 2
    assert tokens.count == 2 * per_frame and tokens.frames_shown == [0, 2]  # key frames (0, 1) and (2, 3)
    assert tokens.frame_ids.tolist() == [0] * per_frame + [1] * per_frame
    assert sorted(set(tokens.coords[:, 0].tolist())) == [0.0, 1.0]
    attention = tokens.context.need("attention", "t")  # each frame's received attention sums to 1, so each pair's mean does
    assert attention.shape == (tokens.count,) and torch.allclose(attention.view(2, -1).sum(1), torch.ones(2))
    assert tokens.context.need("keys", "t").shape == (tokens.count, model.net.arch.vision_dim)
    pred = model.decode(video, tokens, PrunePlan(keep=torch.arange(per_frame, 2 * per_frame)), StageTimer())
    assert pred.extras["frame"] == 2 and pred.masks.shape == (6, 32, 32)  # a token of the second group prompts frame 2
    image = load_dataset("synthetic-image:n=1,size=32")[0]
    assert model.encode(image, StageTimer()).count == per_frame


def test_patch_pixels_follow_the_token_grid_by_hand():
    """Token i (row-major on the PATCH-pixel grid, as grid_coords) reads out the pixels of its own patch."""
    from evtp_cli.models.tiny_net import PATCH
    from evtp_cli.models.tiny_train import patch_pixels

    h, w = 2, 3
    image = torch.zeros(1, 3, h * PATCH, w * PATCH)
    for row in range(h):
        for col in range(w):
            image[0, :, row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH] = 0.1 * (row * w + col)
    image[0, 2, 0, 1] = 0.9  # one pixel of token 0, blue channel, row 0, column 1
    patches = patch_pixels(image)
    assert patches.shape == (1, h * w, 3 * PATCH * PATCH)
    for token in range(1, h * w):
        assert torch.allclose(patches[0, token], torch.full((3 * PATCH * PATCH,), (0.1 * token - 0.45) / 0.25))
    # channel-major within a patch: blue channel, then row 0, column 1
    assert patches[0, 0, 2 * PATCH * PATCH + 1] == pytest.approx((0.9 - 0.45) / 0.25)
    assert (patches[0, 0] == (0 - 0.45) / 0.25).sum() == 3 * PATCH * PATCH - 1


@pytest.mark.parametrize("stage", [1, 2])
def test_appearance_probe_lowers_its_loss_and_trains_the_tokens(stage):
    """With the patch read-out on (--appearance), both stages' losses include it, it goes down, and its
    gradient reaches what the stage trains (the encoder in stage 1, the projector in stage 2)."""
    from evtp_cli.models.tiny_train import AppearanceProbe

    net = _small_net(2 if stage == 2 else 1)
    probe = AppearanceProbe(net.arch.vision_dim if stage == 1 else net.arch.llm_dim)
    gen = torch.Generator().manual_seed(0)
    if stage == 1:
        batch = make_batch([11, 0, 0], 0, batch=3, size=32, frames=1, max_objects=3, key_frames="1")
        step = lambda b: stage1_step(net, b, gen, probe, 1.0)  # noqa: E731
        trained = net.vision.stem1[0].weight
    else:
        for module in (net.vision, net.mask_head, net.attributes):
            module.requires_grad_(False)
        batch = make_batch([11, 1, 0], 0, batch=2, size=32, frames=4, max_objects=3, key_frames="first-2")
        step = lambda b: stage2_step(net, b, appearance=probe, appearance_weight=1.0)  # noqa: E731
        trained = net.projector.net[0].weight
    before = trained.detach().clone()
    params = [p for p in [*net.parameters(), *probe.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    looks = []
    for _ in range(10):
        out = step(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        looks.append(float(out["look"].detach()))
    assert looks[-1] < 0.8 * looks[0]
    assert not torch.equal(trained, before)
