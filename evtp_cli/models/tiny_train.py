"""Train tiny-ivs on the synthetic train split (full tokens only; no token-dropping augmentation).

Stage 1 (vision): the vision encoder, projector, offset head and the promptable mask head learn
class-agnostic segmentation from point prompts on ground-truth objects, plus a per-token attribute probe
(colour, shape, size) so that tokens carry object-level information, as pretrained vision towers do.
Stage 2 (language): with the vision encoder and mask head frozen, the LLM, projector, pointer and
offset heads learn to point at a token of the referred object (a cross-entropy over the visual tokens
with all target tokens as positives), on images and videos (40 % of the steps). On video the targets are
the object's tokens after the first key frame, the ones that under causal attention can see how it
moved, and the probes' motion terms weigh 5x: without both the LLM does not learn motion instructions
(docs/evtp.md, "Why video differed"). The LLM sees each pair of key frames as one frame of tokens
(`--temporal-patch 2`, as Qwen2.5-VL): stage 2 widens stage 1's single-frame projector to pairs.

    python -m evtp_cli.models.tiny_train --stage 1 --minutes 25 --lr 2e-3 --out runs/tiny
    python -m evtp_cli.models.tiny_train --stage 2 --minutes 65 --lr 1.5e-3 --init runs/tiny/stage1.safetensors --out runs/tiny
    python -m evtp_cli.models.tiny_train --export runs/tiny/stage2.safetensors   # -> evtp_cli/assets/

The shipped weights' command, seeds and wall time are recorded in evtp_cli/assets/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evtp_cli.api import key_frame_indices
from evtp_cli.data.synthetic import (
    COLOURS,
    SHAPES,
    SPLIT_CODES,
    VOCABULARY,
    SceneConfig,
    generate_scene,
)
from evtp_cli.models.tiny_net import (
    PATCH,
    SEG,
    TinyArch,
    TinyIVSNet,
    grid_coords,
    group_starts,
    key_frame_coords,
)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MOTIONS = ["up", "down", "left", "right", None]  # None: still, or no dominant direction


class LLMProbes(nn.Module):
    """Training-only linear probes on the LLM's outputs (deep supervision; never shipped).

    Without them the pointer loss alone left the LLM on a plateau (the [SEG] state did not gather the
    instruction, visual outputs lost their token's identity): pointing accuracy stayed near 0.45 for
    900 steps. The [SEG] probe reads the target's colour, shape, size, location and motion; the visual
    probe reads each token's own object's colour, shape, size and (from the second key frame on, where
    earlier frames are visible) motion.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.seg = nn.Linear(dim, len(COLOURS) + len(SHAPES) + 3 + len(MOTIONS))
        self.vis = nn.Linear(dim, len(COLOURS) + 1 + len(SHAPES) + 1 + 1 + len(MOTIONS))


class AppearanceProbe(nn.Module):
    """Training-only linear read-out of each token's own patch of pixels (never shipped).

    Trained on pointing and segmentation alone, tiny-ivs maps every background patch to one token: the
    mean (1 - cos)/2 between two background tokens at the LLM input is below 0.0005, where pretrained
    vision towers (trained to describe whole images) keep textured background tokens apart and carry
    their position. This asks the encoder's tokens (stage 1) and the projector's outputs (stage 2) to keep
    their patch's appearance, to bring the token geometry that pruners measure closer to the real models'.
    Measured (`--appearance 1`): the read-out learns the patches, but background tokens stay almost parallel
    (0.00081), so it is off in the shipped recipe (evtp_cli/assets/README.md, "Tried, not shipped").
    """

    def __init__(self, dim: int):
        super().__init__()
        self.read = nn.Linear(dim, 3 * PATCH * PATCH)


def patch_pixels(images: torch.Tensor) -> torch.Tensor:
    """images [B, 3, H, W] in [0, 1] -> each token's patch [B, (H/PATCH)*(W/PATCH), 3*PATCH*PATCH], normalised as the encoder's input."""
    return F.unfold((images - 0.45) / 0.25, PATCH, stride=PATCH).transpose(1, 2)


def appearance_loss(probe: AppearanceProbe, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the probe's read-out of tokens [B, N, C] against the patches of images [B, 3, H, W]."""
    return F.mse_loss(probe.read(tokens), patch_pixels(images))


@dataclass
class Batch:
    images: torch.Tensor  # [B*T, 3, H, W] every frame
    frames: int  # T
    key_frames: list[int]
    instance: torch.Tensor  # [B, n_max, T, H, W] bool (padded objects are all-False)
    n_objects: list[int]
    targets: list[int]
    texts: list[str]
    colours: torch.Tensor  # [B, n_max] long
    shapes: torch.Tensor  # [B, n_max] long
    motions: torch.Tensor  # [B, n_max] long: index into MOTIONS


def make_batch(rng_base: list[int], step: int, batch: int, size: int, frames: int, max_objects: int, key_frames: str) -> Batch:
    cfg = SceneConfig(size=size, frames=frames, min_objects=2, max_objects=max_objects)
    scenes = [generate_scene(np.random.default_rng([*rng_base, step, i]), cfg) for i in range(batch)]
    n_max = max(len(s.objects) for s in scenes)
    inst = np.zeros((batch, n_max, frames, size, size), dtype=bool)
    colours = np.zeros((batch, n_max), dtype=np.int64)
    shapes = np.zeros((batch, n_max), dtype=np.int64)
    motions = np.full((batch, n_max), MOTIONS.index(None), dtype=np.int64)
    colour_ids = {c: i for i, c in enumerate(COLOURS)}
    shape_ids = {s: i for i, s in enumerate(SHAPES)}
    for b, s in enumerate(scenes):
        inst[b, : len(s.objects)] = s.instance_masks
        for j, o in enumerate(s.objects):
            colours[b, j] = colour_ids[o.colour]
            shapes[b, j] = shape_ids[o.shape]
            motions[b, j] = MOTIONS.index(o.direction())
    images = np.stack([np.stack(s.frames) for s in scenes])  # [B, T, H, W, 3]
    images_t = torch.from_numpy(images).float().div_(255).permute(0, 1, 4, 2, 3).reshape(batch * frames, 3, size, size)
    return Batch(
        images=images_t,
        frames=frames,
        key_frames=key_frame_indices(frames, key_frames) if frames > 1 else [0],
        instance=torch.from_numpy(inst),
        n_objects=[len(s.objects) for s in scenes],
        targets=[s.target for s in scenes],
        texts=[s.text for s in scenes],
        colours=torch.from_numpy(colours),
        shapes=torch.from_numpy(shapes),
        motions=torch.from_numpy(motions),
    )


def token_labels(instance: torch.Tensor, n_objects: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """instance [B, n, T, H, W] -> (owner [B, T, h*w] object index or -1, coverage [B, n, T, h*w])."""
    b, n, t, h, w = instance.shape
    cov = F.avg_pool2d(instance.float().view(b * n * t, 1, h, w), PATCH).view(b, n, t, -1)
    best, owner = cov.max(dim=1)
    owner = torch.where(best >= 0.25, owner, torch.full_like(owner, -1))
    return owner, cov


def object_centres(instance: torch.Tensor) -> torch.Tensor:
    """[B, n, T, H, W] -> [B, n, T, 2] mask centroids (y, x) in [0, 1] (0.5 for empty masks)."""
    b, n, t, h, w = instance.shape
    m = instance.float()
    area = m.sum((-1, -2)).clamp(min=1)
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    cy = (m.sum(-1) * ys).sum(-1) / area
    cx = (m.sum(-2) * xs).sum(-1) / area
    return torch.stack([cy, cx], -1)


def offset_loss(net: TinyIVSNet, proj: torch.Tensor, owner: torch.Tensor, centres: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """proj [B, T, N, D], owner [B, T, N], centres [B, n, T, 2]: L1 between voted and true centres."""
    b, t, n, _ = proj.shape
    tok_yx = grid_coords(*hw)  # [N, 2]
    pred = net.offset(proj) + tok_yx  # [B, T, N, 2]
    idx = owner.clamp(min=0)
    true = torch.gather(centres.permute(0, 2, 1, 3), 2, idx[..., None].expand(b, t, n, 2))  # [B, T, N, 2]
    valid = owner >= 0
    if not valid.any():
        return proj.sum() * 0
    return (pred - true).abs().sum(-1)[valid].mean()


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = logits.sigmoid()
    inter = (p * target).sum((-1, -2))
    dice = 1 - (2 * inter + 1) / (p.sum((-1, -2)) + target.sum((-1, -2)) + 1)
    return bce + dice.mean()


def stage1_step(net: TinyIVSNet, batch: Batch, gen: torch.Generator, appearance: AppearanceProbe | None = None,
                appearance_weight: float = 0.0) -> dict[str, torch.Tensor]:
    bsz, t = len(batch.targets), batch.frames
    size = batch.images.shape[-1]
    h = w = size // PATCH
    tokens, f2, f1 = net.vision(batch.images)  # [B*T, N, C]
    owner, _ = token_labels(batch.instance, batch.n_objects)  # [B, T, N]
    # attribute probe
    col_logits, shp_logits, size_pred = net.attributes(tokens)
    own = owner.view(bsz * t, -1)
    bg_c, bg_s = len(COLOURS), len(SHAPES)
    col_t = torch.where(own >= 0, torch.gather(batch.colours, 1, own.clamp(min=0).view(bsz, -1)).view_as(own), torch.full_like(own, bg_c))
    shp_t = torch.where(own >= 0, torch.gather(batch.shapes, 1, own.clamp(min=0).view(bsz, -1)).view_as(own), torch.full_like(own, bg_s))
    areas = batch.instance.float().mean((-1, -2)).sqrt() * 4  # [B, n, T]
    size_t = torch.gather(areas.permute(0, 2, 1).reshape(bsz * t, -1), 1, own.clamp(min=0))
    loss_attr = F.cross_entropy(col_logits.flatten(0, 1), col_t.flatten()) + F.cross_entropy(shp_logits.flatten(0, 1), shp_t.flatten())
    obj = own >= 0
    loss_size = (size_pred - size_t).abs()[obj].mean() if obj.any() else tokens.sum() * 0
    # offsets from projected tokens
    proj = net.project(tokens[:, None]).view(bsz, t, h * w, -1)  # each frame on its own
    centres = object_centres(batch.instance)
    loss_off = offset_loss(net, proj, owner, centres, (h, w))
    # promptable masks: one random object per frame, prompted near its centre or at a pixel inside it
    inst = batch.instance.permute(0, 2, 1, 3, 4).reshape(bsz * t, -1, size, size)  # [B*T, n, H, W]
    n_obj = torch.tensor(batch.n_objects).repeat_interleave(t)
    pick = (torch.rand(bsz * t, generator=gen) * n_obj).long()
    gt = inst[torch.arange(bsz * t), pick].float()
    cen = centres.permute(0, 2, 1, 3).reshape(bsz * t, -1, 2)[torch.arange(bsz * t), pick]
    points = cen + 0.02 * torch.randn(bsz * t, 2, generator=gen)
    inside = torch.rand(bsz * t, generator=gen) < 0.3
    for i in torch.nonzero(inside).flatten().tolist():
        ys, xs = torch.nonzero(gt[i] > 0, as_tuple=True)
        if ys.numel():
            j = int(torch.randint(ys.numel(), (1,), generator=gen))
            points[i] = torch.stack([(ys[j] + 0.5) / size, (xs[j] + 0.5) / size])
    logits = net.mask_head(net.tokens_to_grid(tokens, h, w), f2, f1, points)
    loss_mask = dice_bce(logits, gt)
    with torch.no_grad():
        pred = logits > 0
        iou = ((pred & (gt > 0)).sum((-1, -2)).float() / ((pred | (gt > 0)).sum((-1, -2)).float().clamp(min=1))).mean()
    total = loss_mask + 0.3 * loss_attr + 0.3 * loss_size + 2.0 * loss_off
    out = {"mask": loss_mask, "attr": loss_attr, "off": loss_off, "iou": iou}
    if appearance is not None:
        out["look"] = appearance_loss(appearance, tokens, batch.images)
        total = total + appearance_weight * out["look"]
    return {"loss": total, **out}


def llm_forward(
    net: TinyIVSNet, proj: torch.Tensor, coords: torch.Tensor, texts: list[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """proj [B, N, D], coords [N, 3] -> (pointer logits [B, N], [SEG] hidden [B, D], visual hidden [B, N, D]).

    The same maths as inference's prefill + one cached decode step (a causal model sees the same prefix)."""
    bsz, n, _ = proj.shape
    max_text = net.arch.max_text
    ids = [net.tokenizer.encode(t, max_text) for t in texts]
    longest = max(len(i) for i in ids) + 1
    rows = torch.zeros(bsz, longest, dtype=torch.long)
    for b, seq in enumerate(ids):
        rows[b, : len(seq) + 1] = torch.tensor(seq + [SEG])
    x = torch.cat([net.llm.visual_inputs(proj, coords.expand(bsz, n, 3)), net.llm.text_inputs(rows)], 1)
    hidden, _ = net.llm.run(x)
    seg_pos = torch.tensor([n + len(seq) for seq in ids])
    seg_hidden = hidden[torch.arange(bsz), seg_pos]
    return net.pointer(seg_hidden, hidden[:, :n]), seg_hidden, hidden[:, :n]


def probe_losses(
    probes: LLMProbes, batch: Batch, seg_hidden: torch.Tensor, vis_hidden: torch.Tensor, owner: torch.Tensor, inst: torch.Tensor,
    motion_weight: float = 1.0,
) -> torch.Tensor:
    """Deep supervision of the LLM outputs (see LLMProbes). owner [B, K, N]; inst [B, n, K, H, W].
    `motion_weight` scales the two motion terms ([SEG] and visual tokens)."""
    bsz, kf, n = owner.shape
    nc, ns, nm = len(COLOURS), len(SHAPES), len(MOTIONS)
    rows = torch.arange(bsz)
    target = torch.tensor(batch.targets)
    area = inst.float().mean((-1, -2)).sqrt() * 4  # [B, n, K]
    # [SEG]: the target's attributes, size, location (first key frame) and motion
    seg = probes.seg(seg_hidden)
    centre = object_centres(inst)[rows, target, 0]
    loss = F.cross_entropy(seg[:, :nc], batch.colours[rows, target]) + F.cross_entropy(seg[:, nc : nc + ns], batch.shapes[rows, target])
    loss = loss + (seg[:, nc + ns : nc + ns + 2] - centre).abs().sum(-1).mean() * 5
    loss = loss + (seg[:, nc + ns + 2] - area[rows, target, 0]).abs().mean()
    if kf > 1:
        loss = loss + motion_weight * F.cross_entropy(seg[:, -nm:], batch.motions[rows, target])
    # visual tokens: their own object's attributes (background as an extra class)
    vis = probes.vis(vis_hidden).view(bsz, kf, n, -1)
    own = owner.clamp(min=0).flatten(1)
    is_obj = owner >= 0
    col = torch.where(is_obj, torch.gather(batch.colours, 1, own).view_as(owner), torch.full_like(owner, nc))
    shp = torch.where(is_obj, torch.gather(batch.shapes, 1, own).view_as(owner), torch.full_like(owner, ns))
    loss = loss + F.cross_entropy(vis[..., : nc + 1].flatten(0, 2), col.flatten())
    loss = loss + F.cross_entropy(vis[..., nc + 1 : nc + ns + 2].flatten(0, 2), shp.flatten())
    if is_obj.any():
        own_area = torch.gather(area.permute(0, 2, 1), 2, owner.clamp(min=0))  # [B, K, N]
        loss = loss + (vis[..., nc + ns + 2] - own_area).abs()[is_obj].mean()
    if kf > 1:
        later = is_obj.clone()
        later[:, 0] = False  # tokens of the first key frame cannot see motion (causal attention)
        if later.any():
            mot = torch.gather(batch.motions, 1, own).view_as(owner)
            loss = loss + motion_weight * F.cross_entropy(vis[..., -nm:][later], mot[later])
    return loss


def pointer_targets(owner: torch.Tensor, cov: torch.Tensor, targets: torch.Tensor, point_later: bool = False) -> torch.Tensor:
    """[B, K*N] bool: the tokens the pointer may pick. owner [B, K, N] (object per token, -1 background),
    cov [B, n, K, N] (each object's coverage of each token), targets [B].

    The target's own tokens; where it owns none (too small), the tokens it touches. With `point_later`
    and K > 1, only those after the first key frame where there are any there."""
    bsz, kf, n = owner.shape
    positive = owner.flatten(1) == targets[:, None]
    touched = cov[torch.arange(bsz), targets].flatten(1) > 0
    positive = positive | (touched & ~positive.any(1, keepdim=True))
    if point_later and kf > 1:
        later = positive.clone()
        later[:, :n] = False
        positive = torch.where(later.any(1, keepdim=True), later, positive)
    return positive


def stage2_step(
    net: TinyIVSNet, batch: Batch, probes: LLMProbes | None = None, motion_weight: float = 1.0, point_later: bool = False,
    appearance: AppearanceProbe | None = None, appearance_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """One stage-2 step. With `point_later`, a video's pointer targets are the target's tokens in key frames
    after the first, the ones that (under causal attention) can see how their object moves."""
    bsz, t = len(batch.targets), batch.frames
    size = batch.images.shape[-1]
    h = w = size // PATCH
    keys = batch.key_frames
    key_images = batch.images.view(bsz, t, *batch.images.shape[1:])[:, keys].flatten(0, 1)
    with torch.no_grad():  # the vision encoder is frozen; only key frames reach the LLM
        tokens, _, _ = net.vision(key_images)
    proj = net.project(tokens.view(bsz, len(keys), h * w, -1))  # [B, K, N, D]: K frames of LLM tokens (groups)
    inst = batch.instance[:, :, group_starts(keys, net.arch.temporal_patch)]  # a group is labelled by its first frame
    owner, cov = token_labels(inst, batch.n_objects)
    loss_off = offset_loss(net, proj, owner, object_centres(inst), (h, w))
    kf = proj.shape[1]
    coords = key_frame_coords(kf, h, w)
    logits, seg_hidden, vis_hidden = llm_forward(net, proj.flatten(1, 2), coords, batch.texts)
    positive = pointer_targets(owner, cov, torch.tensor(batch.targets), point_later)
    loss_ptr = (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positive, -1e9), 1)).mean()
    out = {"ptr": loss_ptr, "off": loss_off}
    total = loss_ptr + 2.0 * loss_off
    if probes is not None:
        out["probe"] = probe_losses(probes, batch, seg_hidden, vis_hidden.view(bsz, kf, h * w, -1).flatten(1, 2), owner, inst, motion_weight)
        total = total + out["probe"]
    if appearance is not None:  # a group of frames is read out as its first frame, where it is labelled too
        firsts = key_images.view(bsz, len(keys), *key_images.shape[1:])[:, :: net.arch.temporal_patch]
        out["look"] = appearance_loss(appearance, proj.flatten(0, 1), firsts.flatten(0, 1))
        total = total + appearance_weight * out["look"]
    with torch.no_grad():
        out["hit"] = positive[torch.arange(bsz), logits.argmax(1)].float().mean()
    return {"loss": total, **out}


def save(net: TinyIVSNet, path: Path, extra: dict) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items() if not k.startswith("attributes.")}
    save_file(state, str(path), metadata={"arch": json.dumps(net.arch.to_dict()), "train": json.dumps(extra)})


def load(path: Path) -> tuple[TinyIVSNet, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
    arch = TinyArch(**json.loads(meta["arch"]))
    net = TinyIVSNet(arch)
    missing, unexpected = net.load_state_dict(load_file(str(path)), strict=False)
    if unexpected or any(not m.startswith("attributes.") for m in missing):
        raise RuntimeError(f"weights do not match tiny-ivs: missing {missing}, unexpected {unexpected}")
    return net, json.loads(meta.get("train", "{}"))


def with_temporal_patch(net: TinyIVSNet, temporal_patch: int) -> TinyIVSNet:
    """`net` with its projector widened from single frames to groups of `temporal_patch` frames.

    The first layer's weights are split evenly over the frames of a group, so a repeated frame (an
    image) projects exactly as before and stage 2 starts from stage 1's projector."""
    if temporal_patch == net.arch.temporal_patch:
        return net
    if net.arch.temporal_patch != 1:
        raise ValueError(f"can only widen a single-frame projector, not temporal_patch={net.arch.temporal_patch}")
    arch = TinyArch(**{**net.arch.to_dict(), "temporal_patch": temporal_patch})
    wide = TinyIVSNet(arch)
    state = net.state_dict()
    first = "projector.net.0.weight"
    state[first] = state[first].repeat(1, temporal_patch) / temporal_patch
    wide.load_state_dict(state)
    return wide


def cosine_lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def train(args: argparse.Namespace) -> Path:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    if args.init:
        net, _ = load(Path(args.init))
        if args.stage == 1:
            raise SystemExit("--init is for stage 2")
    else:
        net = TinyIVSNet(TinyArch(vocab=list(VOCABULARY)))
    probes = None
    if args.stage == 2:
        net = with_temporal_patch(net, args.temporal_patch)  # stage 1 sees single frames
        for module in (net.vision, net.mask_head, net.attributes):
            module.requires_grad_(False)
        if args.probes:
            probes = LLMProbes(net.arch.llm_dim)
    appearance = None
    if args.appearance > 0:
        appearance = AppearanceProbe(net.arch.vision_dim if args.stage == 1 else net.arch.llm_dim)
    params = [p for p in net.parameters() if p.requires_grad]
    params += [p for extra in (probes, appearance) if extra is not None for p in extra.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / f"stage{args.stage}.log", "a")
    start = time.time()
    budget = args.minutes * 60
    est_total = args.steps or 10_000
    step = 0
    history: dict[str, list[float]] = {}
    while True:
        elapsed = time.time() - start
        if (args.steps and step >= args.steps) or (not args.steps and elapsed > budget):
            break
        video = args.stage == 2 and (step % 10) < int(10 * args.video_fraction)
        if args.stage == 1 and (step % 4 == 3):
            batch = make_batch([SPLIT_CODES["train"], 7, args.seed], step, args.batch, 48, 1, args.max_objects, "1")
        elif video:
            batch = make_batch([SPLIT_CODES["train"], 8, args.seed], step, max(4, args.batch // 3), 48, 8, args.max_objects, args.key_frames)
        else:
            batch = make_batch([SPLIT_CODES["train"], 9, args.seed], step, args.batch, 64, 1, args.max_objects, "1")
        if not args.steps and step > 50:
            rate = step / elapsed
            est_total = int(rate * budget)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, est_total, args.lr)
        if args.stage == 1:
            out_step = stage1_step(net, batch, gen, appearance, args.appearance)
        else:
            out_step = stage2_step(net, batch, probes, args.motion_weight, bool(args.point_later), appearance, args.appearance)
        opt.zero_grad(set_to_none=True)
        out_step["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        for key, value in out_step.items():
            history.setdefault(key, []).append(float(value.detach()))
        step += 1
        if step % args.log_every == 0:
            means = {k: float(np.mean(v[-args.log_every:])) for k, v in history.items()}
            line = f"step {step} t={time.time() - start:.0f}s " + " ".join(f"{k}={v:.4f}" for k, v in means.items())
            print(line, flush=True)
            log.write(line + "\n")
            log.flush()
    path = out / f"stage{args.stage}.safetensors"
    recipe = {"seed": args.seed, "batch": args.batch, "lr": args.lr, "max_objects": args.max_objects, "appearance": args.appearance}
    if args.stage == 2:
        recipe.update(video_fraction=args.video_fraction, key_frames=args.key_frames, probes=args.probes,
                      motion_weight=args.motion_weight, point_later=args.point_later, temporal_patch=args.temporal_patch)
    save(net, path, {"stage": args.stage, "steps": step, "seconds": round(time.time() - start), **recipe})
    print(f"saved {path} after {step} steps, {time.time() - start:.0f}s")
    return path


def export(path: Path) -> None:
    """Copy trained weights and the model config/vocabulary into the package assets."""
    net, info = load(path)
    save(net, ASSETS / "tiny_ivs.safetensors", info)
    (ASSETS / "config.json").write_text(json.dumps({k: v for k, v in net.arch.to_dict().items() if k != "vocab"}, indent=2) + "\n")
    (ASSETS / "vocab.json").write_text(json.dumps(net.tokenizer.itos, indent=1) + "\n")
    print(f"exported {path} -> {ASSETS}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, choices=[1, 2], default=1)
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock budget (ignored with --steps)")
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-objects", type=int, default=6)
    parser.add_argument("--video-fraction", type=float, default=0.4, help="stage 2: share of steps on video batches")
    parser.add_argument("--key-frames", default="first-4", help="stage 2: key frames of a training video the LLM sees (first-K / uniform-K)")
    parser.add_argument("--probes", type=int, default=1, help="stage 2: deep supervision of LLM outputs (1) or not (0)")
    parser.add_argument("--motion-weight", type=float, default=5.0, help="stage 2: weight of the probes' motion terms")
    parser.add_argument("--point-later", type=int, default=1, help="stage 2: video pointer targets only after the first key frame (1) or in all (0)")
    parser.add_argument("--temporal-patch", type=int, default=2,
                        help="stage 2: consecutive key frames merged into one LLM token per position (Qwen2.5-VL: 2)")
    parser.add_argument("--appearance", type=float, default=0.0,
                        help="weight of the training-only patch read-out (AppearanceProbe) on the encoder's tokens (stage 1) and the projector's outputs (stage 2); 0: off")
    parser.add_argument("--init", default="")
    parser.add_argument("--out", default="runs/tiny")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--export", default="", help="export these weights to the package assets and exit")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.export:
        export(Path(args.export))
        return
    train(args)


if __name__ == "__main__":
    main()
