"""tiny-ivs training: a few steps on a fixed batch lower the loss, in both stages (no full retraining)."""

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


def _small_net():
    torch.manual_seed(0)
    return TinyIVSNet(TinyArch(vocab=list(VOCABULARY), vision_dim=32, llm_dim=32, llm_layers=1, llm_mlp=64, pointer_dim=16))


def test_stage1_loss_goes_down():
    net = _small_net()
    batch = make_batch([11, 0, 0], 0, batch=3, size=32, frames=1, max_objects=3, key_frames="1")
    gen = torch.Generator().manual_seed(0)
    losses = _fit(net, lambda b: stage1_step(net, b, gen), batch)
    assert losses[-1] < 0.8 * losses[0]


def test_stage2_loss_goes_down_on_video():
    net = _small_net()
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
