"""The published baselines on the Sa2VA-style backends (tiny-random presets, CPU, no downloads).

- every registered pruner runs on both backends at ratio 0.25 on an image and a 4-frame video and keeps
  25 % of the visual tokens, with the efficiency columns (ttft, memory, GFLOPs) present and sane;
- the vision hook: the rows before the projector project back onto the LLM's visual tokens, and the
  recomputed vision attention reproduces the hooked block's own (sdpa) output;
- the in-LLM hook: an identity hook changes nothing (ids, [SEG] states and masks bit for bit); decoding
  after in-LLM pruning (unequal cache lengths, merged rows) equals a recomputation without a cache, under
  sdpa and eager attention; FastV keeps what attention computed by hand says.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import SAMPLE_DATASETS, cached_model, encode_capturing

from evtp_cli.api import LayerPrune, PrunePlan
from evtp_cli.bench.evaluate import REFERENCE, prefill_gflops, run_sample
from evtp_cli.bench.results import ROW_COLUMNS, read_results
from evtp_cli.bench.runner import RunConfig, run
from evtp_cli.metrics.timing import StageTimer
from evtp_cli.models.hooks import decode_position_ids
from evtp_cli.models.sa2va_inner import capture_inputs
from evtp_cli.pruners import PRUNERS, get_pruner, list_pruners
from evtp_cli.pruners.stages import topk_sorted

FAMILIES = ["sa2va-qwen", "sa2va-internvl"]
DATASETS = SAMPLE_DATASETS
pytestmark = pytest.mark.usefixtures("one_thread")
model = cached_model


@contextlib.contextmanager
def free_running(m, max_new_tokens=5):
    """A random answer head instead of the fixed one (several decoding steps), restored afterwards."""
    weight = m.net.vlm.lm_head.weight
    saved, budget = weight.detach().clone(), m.config.max_new_tokens
    with torch.no_grad():
        weight.copy_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(11)) * 0.5)
    m.config.max_new_tokens = max_new_tokens
    try:
        yield m
    finally:
        with torch.inference_mode():
            weight.copy_(saved)
        m.config.max_new_tokens = budget


def _stage(name):
    return PRUNERS.load(name).stage


# ---- every baseline, both backends, ratio 0.25 ----------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_every_pruner_keeps_a_quarter_with_efficiency_columns(name, tmp_path):
    spec = f"{name}:preset=tiny-random"
    pruners = list_pruners()
    rows = run(RunConfig(models=[spec], datasets=DATASETS, pruners=pruners, ratios=[0.25], output=tmp_path, warmup=0))
    assert list(read_results(tmp_path)["rows"][0])[: len(ROW_COLUMNS)] == list(ROW_COLUMNS)
    by = {(r["dataset"], r["pruner"]): r for r in rows}
    for dataset in DATASETS:
        ref = by[(dataset, REFERENCE)]
        assert ref["gflops_prefill"] > 0 and ref["speedup_prefill"] == pytest.approx(1.0)
        for pruner in pruners:
            r = by[(dataset, pruner)]
            assert r["n_samples"] == 1 and r["n_failed"] == 0 and not r.get("not_applicable"), (pruner, r)
            assert abs(r["tokens_kept"] / r["tokens_total"] - 0.25) <= 0.03, (pruner, r["tokens_kept"], r["tokens_total"])
            assert 0 < r["ttft_ms"] <= r["ms_total"], (pruner, r)
            assert r["ttft_ms"] >= r["ms_vision"] + r["ms_prefill"]
            assert r["mem_peak_mb"] is None  # CPU
            assert 0 < r["gflops_prefill"] < ref["gflops_prefill"], (pruner, r["gflops_prefill"], ref["gflops_prefill"])
            assert r["speedup_prefill"] is not None and r["speedup"] is not None
            if _stage(pruner) == "llm":
                assert r["tokens_kept"] < r["tokens_equiv"] < r["tokens_total"]
            else:
                assert r["tokens_equiv"] == r["tokens_kept"]


def test_gflops_follow_the_layers_and_fall_with_the_ratio():
    m = model("sa2va-qwen:preset=tiny-random")
    t = m.text_config
    d, inter, dh = t.hidden_size, t.intermediate_size, t.hidden_size // t.num_attention_heads
    s = 100
    per_layer = 2 * d * (2 * d + 2 * t.num_key_value_heads * dh) * s + 2 * 3 * d * inter * s + 2 * d * s * s
    assert m.prefill_flops(s) == pytest.approx(t.num_hidden_layers * per_layer)
    assert prefill_gflops(m, [70] * 4, 30) == pytest.approx(m.prefill_flops(100) / 1e9)
    depth_mixed = prefill_gflops(m, [70, 70, 10, 10], 30)  # FastV-like: two layers at 100 tokens, two at 40
    assert depth_mixed == pytest.approx((m.prefill_flops(100) + m.prefill_flops(40)) / 2 / 1e9)
    assert prefill_gflops(m, [10] * 4, 30) < depth_mixed < prefill_gflops(m, [70] * 4, 30)


# ---- the vision hook -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("task", ["image", "video"])
@torch.inference_mode()
def test_vision_rows_align_with_the_llm_tokens(name, task, samples):
    m = model(f"{name}:preset=tiny-random")
    tokens = m.encode(samples[task], StageTimer())
    side = tokens.state.vision
    rows = side.rows()
    assert rows.shape[0] == tokens.count
    torch.testing.assert_close(side.project(rows).float(), tokens.features, rtol=1e-5, atol=1e-5)
    attention, keys = tokens.context.need("attention", "test"), tokens.context.need("keys", "test")
    assert attention.shape == (tokens.count,) and keys.shape[0] == tokens.count
    vision = m.net.vlm.config.vision_config
    assert keys.shape[1] == vision.hidden_size
    assert tokens.context.extras["key_heads"] == (getattr(vision, "num_heads", None) or vision.num_attention_heads)
    assert tokens.context.extras["attention_kind"] == ("mean-received" if name == "sa2va-qwen" else "cls")
    assert (attention > 0).all()


def _qwen_block_output(m, sample):
    """(hooked attention output, the same recomputed from our q/k and the block's v) for the last full block."""
    visual = m.net.vlm.model.visual
    attn = visual.blocks[m.attention_block].attn
    tokens, out = encode_capturing(m, sample, attn)
    captured = tokens.state.inputs["captured"]["attn"]
    x, kwargs = captured[0][0], captured[1]
    n = x.shape[0]
    v = attn.qkv(x).reshape(n, 3, attn.num_heads, -1)[:, 2]
    cos, sin = kwargs["position_embeddings"]
    q, k, _ = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    rot = lambda t: torch.cat([-t[..., t.shape[-1] // 2 :], t[..., : t.shape[-1] // 2]], -1)  # noqa: E731
    q = q * cos[:, None] + rot(q) * sin[:, None]
    k = k * cos[:, None] + rot(k) * sin[:, None]
    cu = kwargs["cu_seqlens"].tolist()
    outs = []
    for a, b in zip(cu[:-1], cu[1:]):
        probs = torch.softmax(q[a:b].transpose(0, 1) @ k[a:b].transpose(0, 1).transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        outs.append((probs @ v[a:b].transpose(0, 1)).transpose(0, 1).reshape(b - a, -1))
    return out, attn.proj(torch.cat(outs)), tokens, q, k


@torch.inference_mode()
def test_qwen_vision_attention_is_the_full_blocks_attention(samples):
    m = model("sa2va-qwen:preset=tiny-random")
    assert m.attention_block in m.net.vlm.config.vision_config.fullatt_block_indexes
    out, recomputed, tokens, q, k = _qwen_block_output(m, samples["video"])
    torch.testing.assert_close(recomputed, out, rtol=1e-5, atol=1e-5)
    # attention received per patch within each image, then per LLM token (4 patches) in the LLM's order
    cu = tokens.state.inputs["captured"]["attn"][1]["cu_seqlens"].tolist()
    per_patch = torch.cat([
        torch.softmax(q[a:b].transpose(0, 1) @ k[a:b].transpose(0, 1).transpose(-1, -2) / math.sqrt(q.shape[-1]), -1).mean(dim=(0, 1))
        for a, b in zip(cu[:-1], cu[1:])
    ])  # fmt: skip
    from evtp_cli.models.sa2va_qwen import qwen_window_index

    order = torch.argsort(qwen_window_index(m.net.vlm.model.visual, tokens.state.inputs["image_grid_thw"]))
    torch.testing.assert_close(tokens.context.need("attention", "test"), per_patch.view(-1, 4).mean(1)[order], rtol=1e-5, atol=1e-6)


@torch.inference_mode()
def test_internvl_vision_attention_is_the_cls_attention(samples):
    m = model("sa2va-internvl:preset=tiny-random")
    layer = m.net.vlm.model.vision_tower.encoder.layer[m.attention_layer]
    assert m.attention_layer == len(m.net.vlm.model.vision_tower.encoder.layer) - 1
    tokens, out = encode_capturing(m, samples["image"], layer.attention)
    attn = layer.attention
    x = tokens.state.inputs["captured"]["attn"][0][0]
    b, n, c = x.shape
    q, k, v = (proj(x).reshape(b, n, attn.num_heads, -1).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)  # [tiles, H, n, n]
    torch.testing.assert_close(attn.projection_layer((probs @ v).transpose(1, 2).reshape(b, n, c)), out[0], rtol=1e-5, atol=1e-5)
    cls = probs[:, :, 0, 1:].mean(1)  # [tiles, P]: [CLS] row, patches only
    side = int(math.isqrt(cls.shape[1]))
    grid = cls.reshape(b, side, side)  # InternVL's pixel shuffle: each token holds a 2x2 block of patches, row-major
    per_token = grid.reshape(b, side // 2, 2, side // 2, 2).mean(dim=(2, 4)).reshape(-1)
    torch.testing.assert_close(tokens.context.need("attention", "test"), per_token, rtol=1e-5, atol=1e-6)


# ---- the in-LLM hook -------------------------------------------------------------------------------


def _decode(m, sample, tokens, plan):
    return m.decode(sample, tokens, plan, StageTimer())


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("task", ["image", "video"])
def test_identity_llm_hook_changes_nothing(name, task, samples):
    m = model(f"{name}:preset=tiny-random")
    sample = samples[task]
    with free_running(m):
        tokens = m.encode(sample, StageTimer())
        ref = _decode(m, sample, tokens, PrunePlan())
        keep_all = lambda state: LayerPrune(torch.arange(state.visual.numel()))  # noqa: E731
        same = _decode(m, sample, tokens, PrunePlan(inner=keep_all, inner_stage="llm", inner_layers=(1, 2, 3)))
    assert len(ref.extras["generated_ids"]) > 2
    assert same.extras["generated_ids"] == ref.extras["generated_ids"]
    assert same.extras["visual_tokens_per_layer"] == [tokens.count] * 4
    np.testing.assert_array_equal(same.masks, ref.masks)


def _fixed_prune(state):
    """Before layer 2: keep every other visual token, merge the first two dropped ones into one row."""
    if state.layer != 2:
        return None
    n = state.visual.numel()
    keep = torch.arange(0, n, 2)
    groups = torch.full((n,), -1)
    groups[torch.tensor([1, 3])] = 0
    merged = state.hidden[state.visual[torch.tensor([1, 3])]].mean(0, keepdim=True)
    return LayerPrune(keep, merged, groups)


@pytest.mark.parametrize("spec", ["sa2va-qwen:preset=tiny-random", "sa2va-internvl:preset=tiny-random", "sa2va-qwen:preset=tiny-random,attn=eager"])
@torch.inference_mode()
def test_decoding_after_in_llm_pruning_matches_recomputation(spec, samples):
    """Cached decoding (layers 0-1 hold every token, 2-3 only the kept and merged rows) == a fresh
    hooked prefill of prompt + generated tokens at every step (no cache)."""
    m = model(spec)
    plan = PrunePlan(inner=_fixed_prune, inner_stage="llm", inner_layers=(2,))
    with free_running(m, max_new_tokens=4):
        tokens = m.encode(samples["video"], StageTimer())
        state = tokens.state
        with contextlib.ExitStack() as stack:
            pre = m.prefill(state, plan, stack)
            gen = m.greedy(pre)
            lengths = [pre.cache.layers[i].keys.shape[-2] for i in range(4)]
        n = tokens.count
        assert pre.hooks.counts == [n, n, (n + 1) // 2 + 1, (n + 1) // 2 + 1]
        assert lengths[0] == lengths[1] == lengths[2] + n - pre.hooks.counts[2]
        assert len(gen.ids) > 2
        ids, positions = state.input_ids, state.position_ids
        for step, token in enumerate(gen.ids[:-1]):
            ids = torch.cat([ids, torch.tensor([[token]])], 1)
            positions = torch.cat([positions, decode_position_ids(state.next_position, step, positions)], -1)
            longer = dataclasses.replace(state, input_ids=ids, position_ids=positions)
            with contextlib.ExitStack() as stack:
                again = m.prefill(longer, plan, stack)
            torch.testing.assert_close(gen.logits[step + 1], again.logits[0, -1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
@torch.inference_mode()
def test_fastv_matches_attention_computed_by_hand(name, samples):
    m = model(f"{name}:preset=tiny-random")
    sample = samples["image"]
    tokens = m.encode(sample, StageTimer())
    state = tokens.state
    lm = m.language_model
    embeds = m.merged_embeddings(state)
    with capture_inputs({"layer1": lm.layers[1]}) as got:
        lm(inputs_embeds=embeds, position_ids=state.position_ids, attention_mask=torch.ones_like(state.input_ids), use_cache=False)
    h = got["layer1"][0][0]  # the input of layer 1 (output of layer 0)
    layer = lm.layers[1]
    attn = layer.self_attn
    x = layer.input_layernorm(h)
    length, dh = x.shape[1], attn.head_dim
    q = attn.q_proj(x).view(1, length, -1, dh).transpose(1, 2)
    k = attn.k_proj(x).view(1, length, -1, dh).transpose(1, 2)
    cos, sin = lm.rotary_emb(h, state.position_ids)
    rot = lambda t: torch.cat([-t[..., dh // 2 :], t[..., : dh // 2]], -1)  # noqa: E731
    q = q * cos[:, None] + rot(q) * sin[:, None]
    k = k * cos[:, None] + rot(k) * sin[:, None]
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    last = torch.softmax(q[0, :, -1:] @ k[0].transpose(-1, -2) / math.sqrt(dh), dim=-1).mean(0)[0]  # [L]
    kk = 5
    expected = topk_sorted(last[state.visual_index], kk)
    pruner, kept = get_pruner("fastv"), []

    def hook(s):
        result = pruner.prune_layer(s, kk, None)
        if result is not None:
            kept.append(result.keep)
        return result

    pred = _decode(m, sample, tokens, PrunePlan(inner=hook, inner_stage="llm", inner_layers=(2,)))
    assert torch.equal(kept[0], expected)
    assert pred.extras["visual_tokens_per_layer"] == [tokens.count, tokens.count, kk, kk]


def test_generate_pipeline_refuses_inner_plans(samples):
    m = model("sa2va-qwen:preset=tiny-random,pipeline=generate")
    from evtp_cli.errors import EvtpError

    with pytest.raises(EvtpError, match="pipeline=hooked"):
        run_sample(m, samples["image"], get_pruner("fastv"), 0.25, 0)
