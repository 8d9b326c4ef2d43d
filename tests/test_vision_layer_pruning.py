"""`evtp:at=vision-layer-L`: selection inside the vision tower of the Sa2VA backends (CPU, tiny-random presets).

- the LLM gets the right number of tokens, at their original positions, with next_position from the
  unpruned prompt;
- at the last layer (Qwen: the last full-attention block; InternViT: the features' layer) the kept set is
  pre-LLM EVTP's on the same rows (that block's output grouped per token), and the LLM features are the
  unpruned ones at those indices, because nothing but per-token work follows;
- inside the tower: keeping everything gives the unpruned features; pruned, the later blocks equal a dense
  reference written here (Qwen: each kept patch attends to the kept patches of its window or image;
  InternViT: [CLS] + each tile's kept patches, tokens = 2x2 patch blocks);
- a bad L is a one-line error; tiny-ivs says why it cannot; the encode's full-tower time is taken back.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import cached_model, encode_capturing

from evtp_cli.api import InnerHook, PrunePlan, keep_count
from evtp_cli.bench.evaluate import run_sample
from evtp_cli.errors import EvtpError, PrunerNotApplicable
from evtp_cli.metrics.timing import StageTimer
from evtp_cli.models import load_model
from evtp_cli.models.hooks import kept_sequence_index
from evtp_cli.models.sa2va_qwen import Sa2VAQwen, qwen_window_index
from evtp_cli.pruners import get_pruner

pytestmark = pytest.mark.usefixtures("one_thread")

LAST = {"sa2va-qwen": 1, "sa2va-internvl": 1}  # tiny presets: Qwen's only full-attention block; InternViT's last layer


class DeepQwen(Sa2VAQwen):
    """tiny-random with 4 vision blocks, full attention at 1 and 3: pruning after 1 leaves a window block and a full one."""

    def _random_vlm_config(self, preset, tokenizer):
        config, sam = super()._random_vlm_config(preset, tokenizer)
        config.vision_config.depth = 4
        config.vision_config.fullatt_block_indexes = [1, 3]
        return config, sam


def model(spec: str):
    build = (lambda: DeepQwen(Sa2VAQwen.Config(preset="tiny-random"))) if spec == "deep-qwen" else None
    return cached_model(spec, build)


def hook_for(m, tokens, layer: int, ratio: float = 0.25) -> InnerHook:
    return InnerHook(get_pruner(f"evtp:at=vision-layer-{layer}"), keep_count(ratio, tokens.count), tokens.context)


def plan_for(m, tokens, layer: int, ratio: float = 0.25) -> PrunePlan:
    hook = hook_for(m, tokens, layer, ratio)
    return PrunePlan(inner=hook, inner_stage="vision", inner_keep=hook.k)


def block_output(m, sample, layer: int):
    """(tokens, the unpruned output of vision block `layer` in the tower's own layout)."""
    if m.name == "sa2va-qwen":
        block = m.net.vlm.model.visual.blocks[layer]
    else:
        block = m.net.vlm.model.vision_tower.encoder.layer[layer]
    return encode_capturing(m, sample, block)


def rows_of(m, tokens, output: torch.Tensor) -> torch.Tensor:
    """Block output -> one row per LLM token, in the LLM's order (written here, not taken from sa2va_tower)."""
    if m.name == "sa2va-qwen":
        order = torch.argsort(qwen_window_index(m.net.vlm.model.visual, tokens.state.inputs["image_grid_thw"]))
        return output.reshape(-1, 4 * output.shape[-1])[order].float()
    tiles, length, c = output.shape
    side = int(math.isqrt(length - 1))
    grid = output[:, 1:].reshape(tiles, side, side, c)
    groups = m.net.vlm.model.pixel_shuffle(grid.contiguous(), scale_factor=0.5)
    return groups.reshape(-1, groups.shape[-1]).float()


# ---- counts and positions ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec,layer", [("sa2va-qwen:preset=tiny-random", 1), ("sa2va-internvl:preset=tiny-random", 0), ("deep-qwen", 1)])
@pytest.mark.parametrize("task", ["image", "video"])
@torch.inference_mode()
def test_keeps_the_llm_tokens_at_their_original_positions(spec, layer, task, samples):
    m = model(spec)
    sample = samples[task]
    prediction, ms, total, kept = run_sample(m, sample, get_pruner(f"evtp:at=vision-layer-{layer}"), 0.25, 0)
    k = keep_count(0.25, total)
    assert kept == k and prediction.extras["visual_tokens_per_layer"] == [k] * m.llm_layers
    assert prediction.extras["vision_layer"] == layer
    assert prediction.extras["prefill_length"] == prediction.extras["text_tokens"] + k
    assert ms["select"] > 0 and ms["vision"] > 0

    tokens = m.encode(sample, StageTimer())
    state = tokens.state
    plan, _ = m.vision_layer_plan(tokens, plan_for(m, tokens, layer), StageTimer())
    assert plan.keep.numel() == k and bool((plan.keep[1:] > plan.keep[:-1]).all())
    assert plan.features.shape == (k, state.features.shape[1])
    pre = m.prefill(state, plan)
    index = kept_sequence_index(state.input_ids.shape[1], state.visual_index, plan.keep)
    assert torch.equal(pre.pruned.position_ids, state.position_ids[..., index])  # kept tokens keep their ids
    assert pre.pruned.next_position == state.next_position  # decoding continues after the unpruned prompt
    torch.testing.assert_close(pre.pruned.inputs_embeds[0, torch.searchsorted(index, state.visual_index[plan.keep])], plan.features)


# ---- the last layer: pre-LLM EVTP on the same rows ---------------------------------------------------


@pytest.mark.parametrize("name", ["sa2va-qwen", "sa2va-internvl"])
@pytest.mark.parametrize("task", ["image", "video"])
@torch.inference_mode()
def test_at_the_last_layer_it_is_pre_llm_evtp_on_that_layers_rows(name, task, samples):
    m = model(f"{name}:preset=tiny-random")
    layer = LAST[name]
    tokens, output = block_output(m, samples[task], layer)
    k = keep_count(0.25, tokens.count)
    expected = get_pruner("evtp").select(rows_of(m, tokens, output), tokens.coords, k, tokens.context)
    plan, _ = m.vision_layer_plan(tokens, plan_for(m, tokens, layer), StageTimer())
    assert torch.equal(plan.keep, expected)
    # only per-token work follows (Qwen's merger, InternVL's norm, shuffle and projector): the unpruned features
    torch.testing.assert_close(plan.features, tokens.state.features[plan.keep], rtol=1e-6, atol=1e-6)
    same = m.decode(samples[task], tokens, PrunePlan(keep=plan.keep), StageTimer())
    inner = m.decode(samples[task], tokens, plan_for(m, tokens, layer), StageTimer())
    assert inner.extras["generated_ids"] == same.extras["generated_ids"]
    assert (inner.masks == same.masks).mean() > 0.999


# ---- inside the tower -----------------------------------------------------------------------------


def _everything(rows: torch.Tensor) -> torch.Tensor:
    return torch.arange(rows.shape[0])


def _every_third(rows: torch.Tensor) -> torch.Tensor:
    return torch.arange(0, rows.shape[0], 3)


@pytest.mark.parametrize("spec,layer", [("deep-qwen", 1), ("sa2va-internvl:preset=tiny-random", 0)])
@pytest.mark.parametrize("task", ["image", "video"])
@torch.inference_mode()
def test_keeping_everything_inside_the_tower_changes_nothing(spec, layer, task, samples):
    m = model(spec)
    tokens = m.encode(samples[task], StageTimer())
    keep, features = m._tower_pruned(tokens.state, layer, _everything, StageTimer())
    assert torch.equal(keep, torch.arange(tokens.count))
    torch.testing.assert_close(features, tokens.state.features, rtol=1e-5, atol=1e-5)


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = t.shape[-1] // 2
    return t * cos[:, None] + torch.cat([-t[..., half:], t[..., :half]], -1) * sin[:, None]


def _dense_qwen_block(block, x, cos, sin, allowed):
    """A Qwen2.5-VL vision block with a dense boolean attention mask (patch i sees patch j where allowed)."""
    attn = block.attn
    n = x.shape[0]
    q, k, v = attn.qkv(block.norm1(x)).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    logits = q.transpose(0, 1) @ k.transpose(0, 1).transpose(-1, -2) / math.sqrt(q.shape[-1])
    probs = torch.softmax(logits.masked_fill(~allowed[None], float("-inf")), -1)
    x = x + attn.proj((probs @ v.transpose(0, 1)).transpose(0, 1).reshape(n, -1))
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("task", ["image", "video"])
@torch.inference_mode()
def test_qwen_later_blocks_see_the_kept_patches_of_their_window_or_image(task, samples):
    from transformers.vision_utils import get_vision_cu_seqlens, get_vision_window_index

    m = model("deep-qwen")
    visual = m.net.vlm.model.visual
    captured = {}
    handle = visual.blocks[2].register_forward_pre_hook(lambda mod, args, kwargs: captured.update(x=args[0], **kwargs), with_kwargs=True)
    try:
        tokens = m.encode(samples[task], StageTimer())
    finally:
        handle.remove()
    grid = tokens.state.inputs["image_grid_thw"]
    keep, features = m._tower_pruned(tokens.state, 1, _every_third, StageTimer())
    window_index, cu_windows = get_vision_window_index(grid, 2, visual.config.window_size, visual.config.patch_size)
    cu_images = get_vision_cu_seqlens(grid)
    order = torch.argsort(window_index)
    kept_units = torch.sort(order[keep]).values  # window positions, window order
    patches = (kept_units[:, None] * 4 + torch.arange(4)).flatten()
    window_of = torch.searchsorted(cu_windows[1:].long(), patches, right=True)
    image_of = torch.searchsorted(cu_images[1:].long(), patches, right=True)
    assert window_of.unique().numel() > len(grid)  # several windows per image survive, with unequal counts
    x = captured["x"][patches]
    cos, sin = (t[patches] for t in captured["position_embeddings"])
    for i in (2, 3):
        owner = image_of if i in visual.config.fullatt_block_indexes else window_of
        x = _dense_qwen_block(visual.blocks[i], x, cos, sin, owner[:, None] == owner[None, :])
    merged = visual.merger(x)  # kept units in window order
    expected = merged[torch.searchsorted(kept_units, order[keep])]
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("task", ["image", "video"])
@torch.inference_mode()
def test_internvl_later_layers_see_cls_and_the_kept_2x2_patch_blocks(task, samples):
    m = model("sa2va-internvl:preset=tiny-random")
    vlm = m.net.vlm.model
    tower = vlm.vision_tower
    tokens = m.encode(samples[task], StageTimer())
    pixels = tokens.state.inputs["pixel_values"]
    keep, features = m._tower_pruned(tokens.state, 0, _every_third, StageTimer())
    hidden = tower.encoder.layer[0](tower.embeddings(pixels))
    tiles, length, c = hidden.shape
    side = int(math.isqrt(length - 1))
    per_tile = (side // 2) ** 2
    grid = torch.zeros(tiles, side, side, c)
    for t in range(tiles):
        mine = keep[keep // per_tile == t] % per_tile
        cells = [(2 * (j // (side // 2)) + a, 2 * (j % (side // 2)) + b) for j in mine.tolist() for a in (0, 1) for b in (0, 1)]
        index = torch.tensor(sorted(y * side + x for y, x in cells), dtype=torch.long)
        seq = torch.cat([hidden[t, :1], hidden[t, 1 + index]])
        out = tower.layernorm(tower.encoder.layer[1](seq[None]))[0]
        grid.view(tiles, -1, c)[t, index] = out[1:]
    rows = vlm.pixel_shuffle(grid, scale_factor=0.5).reshape(-1, 4 * c)[keep]
    torch.testing.assert_close(features, vlm.multi_modal_projector(rows), rtol=1e-4, atol=1e-5)


# ---- errors and timing -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec,layer,words", [
    ("deep-qwen", 0, "attends within windows only"), ("deep-qwen", 2, "attends within windows only"),
    ("deep-qwen", 4, "has blocks 0..3"), ("sa2va-internvl:preset=tiny-random", 2, "has layers 0..1"),
])  # fmt: skip
@torch.inference_mode()
def test_a_bad_layer_is_a_one_line_error(spec, layer, words, samples):
    m = model(spec)
    with pytest.raises(EvtpError) as err:
        run_sample(m, samples["image"], get_pruner(f"evtp:at=vision-layer-{layer}"), 0.25, 0)
    assert not isinstance(err.value, PrunerNotApplicable)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_bad_layer_ends_a_run_before_its_first_sample(tmp_path, capsys):
    """Checked once the model is loaded, so the folder holds no finished sample and the fixed run may reuse it."""
    from evtp_cli.bench.resume import load_done
    from evtp_cli.cli import main

    args = ["sweep-ratios", "-m", "sa2va-qwen:preset=tiny-random", "-d", "synthetic-image:n=1,size=32", "-r", "0.25", "-o", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        main([*args, "-p", "uniform,evtp:at=vision-layer-0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "vision block 0 of sa2va-qwen attends within windows only" in err
    assert load_done(tmp_path) == {}
    with pytest.raises(SystemExit) as exc:
        main([*args, "-p", "uniform"])
    assert exc.value.code == 0, capsys.readouterr().err


def test_the_at_key_is_checked_and_sets_the_stage():
    assert get_pruner("evtp").stage == "pre-llm" and get_pruner("evtp").vision_layer is None
    inside = get_pruner("evtp:at=vision-layer-15")
    assert inside.stage == "vision" and inside.vision_layer == 15
    for bad in ("vision-layer-", "vision-layer--1", "layer-3", "llm"):
        with pytest.raises(ValueError, match="at must be llm-input or vision-layer-L"):
            get_pruner(f"evtp:at={bad}")


def test_tiny_ivs_says_why_it_cannot_prune_inside_its_encoder(samples):
    m = load_model("tiny-ivs")
    with pytest.raises(PrunerNotApplicable, match="mask head reads every frame") as err:
        run_sample(m, samples["image"], get_pruner("evtp:at=vision-layer-0"), 0.25, 0)
    assert "\n" not in str(err.value)


def test_the_encode_tower_span_is_taken_back_once():
    timer = StageTimer()
    with timer.stage("vision"):
        sum(range(1000))
    before = timer.result()["vision"]
    with timer.stage("vision") as span:
        sum(range(100000))
    assert span.cpu_ms > 0 and timer.result()["vision"] > before
    span.retract()
    span.retract()
    assert timer.result()["vision"] == pytest.approx(before, abs=1e-9)
