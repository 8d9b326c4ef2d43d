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
    batch = make_batch([11, 1, 0], 0, batch=2, size=32, frames=4, max_objects=3, key_frames="uniform-2")
    losses = _fit(net, lambda b: stage2_step(net, b), batch, steps=10)
    assert losses[-1] < 0.8 * losses[0]
