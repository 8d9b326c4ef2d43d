"""Equivalence tests of the Sa2VA-style backends (tiny-random presets, CPU, no downloads).

1. ratio 1.0 through the pruning hook == transformers' own `generate` on the full inputs (ids and masks);
2. pruned hooked prefill == a hand-built prefill (only the kept visual embeddings, original position ids
   passed explicitly to the transformers model);
3. decoding with the KV cache after a pruned prefill == hand-built decoding without a cache, token by token;
4. Sa2VA checkpoint names -> native modules and back: every tensor arrives;
plus the pure hook, loader errors, and `evtp prune-eval` on both models.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import cached_model

from evtp_cli.api import PrunePlan
from evtp_cli.bench.results import read_results
from evtp_cli.data import load_dataset
from evtp_cli.errors import EvtpError
from evtp_cli.metrics.timing import StageTimer
from evtp_cli.models import load_model
from evtp_cli.models.hooks import prune_prefill

FAMILIES = ["sa2va-qwen", "sa2va-internvl"]
model = cached_model


@pytest.fixture(scope="module")
def samples():
    return {"image": load_dataset("synthetic-image:n=1")[0], "video": load_dataset("synthetic-video:n=1")[0]}


@pytest.fixture
def free_running():
    """Replace the random presets' fixed answer head by a random one (longer answers), restored afterwards."""
    saved = []

    def apply(*models, max_new_tokens=6):
        generator = torch.Generator().manual_seed(7)
        head = None
        for m in models:
            weight = m.net.vlm.lm_head.weight
            saved.append((m, weight.detach().clone(), m.config.max_new_tokens))
            if head is None:
                head = torch.randn(weight.shape, generator=generator) * 0.5
            with torch.no_grad():
                weight.copy_(head)
            m.config.max_new_tokens = max_new_tokens

    yield apply
    for m, weight, budget in saved:
        with torch.inference_mode():
            m.net.vlm.lm_head.weight.copy_(weight)
        m.config.max_new_tokens = budget


def encode(m, sample):
    return m.encode(sample, StageTimer())


# ---- 1. ratio 1.0: hooked == unhooked -----------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("task", ["image", "video"])
def test_ratio_one_hooked_equals_unhooked_generate(name, task, samples, free_running):
    hooked = model(f"{name}:preset=tiny-random")
    reference = model(f"{name}:preset=tiny-random,pipeline=generate")
    assert all(torch.equal(a, b) for a, b in zip(hooked.net.state_dict().values(), reference.net.state_dict().values()))
    sample = samples[task]
    tokens = encode(hooked, sample)
    everything = PrunePlan(keep=torch.arange(tokens.count))
    got = hooked.decode(sample, tokens, everything, StageTimer())
    want = reference.decode(sample, encode(reference, sample), PrunePlan(), StageTimer())
    assert got.extras["generated_ids"] == want.extras["generated_ids"]
    assert got.extras["seg_tokens"] == want.extras["seg_tokens"] == 1
    assert got.masks.shape == want.masks.shape == sample.masks.shape
    np.testing.assert_array_equal(got.masks, want.masks)
    assert got.masks.any()
    # free-running answers (no fixed head): identical ids over several cached decoding steps
    free_running(hooked, reference)
    gen = hooked.greedy(hooked.prefill(tokens.state, everything))
    ref = reference.generate_reference(tokens.state)
    assert len(gen.ids) > 2 and gen.ids == ref.ids


# ---- hand-built reference for 2. and 3. ----------------------------------------------------------


def hand_built(m, state, keep):
    """Only the kept visual embeddings, original position ids computed here and passed explicitly."""
    vlm = m.net.vlm
    ids = state.input_ids
    image_id = vlm.config.image_token_id
    visual = torch.nonzero(ids[0] == image_id, as_tuple=True)[0]
    embeds = vlm.get_input_embeddings()(ids).clone()
    embeds[0, visual] = state.features
    rows = sorted(set(range(ids.shape[1])) - set(visual.tolist()) | set(visual[keep].tolist()))
    rows = torch.tensor(rows)
    if m.family == "qwen":
        full, deltas = vlm.model.get_rope_index(
            ids, mm_token_type_ids=(ids == image_id).int(), image_grid_thw=state.inputs["image_grid_thw"],
            attention_mask=torch.ones_like(ids),
        )
        next_position = ids.shape[1] + int(deltas)
    else:
        full = torch.arange(ids.shape[1])[None]
        next_position = ids.shape[1]
    return embeds[:, rows], full[..., rows], next_position


def forward(m, embeds, positions):
    out = m.net.vlm(inputs_embeds=embeds, position_ids=positions, attention_mask=torch.ones(1, embeds.shape[1], dtype=torch.long),
                    output_hidden_states=True)
    return out.logits, out.hidden_states[-1]


def pruned_plan(tokens):
    generator = torch.Generator().manual_seed(3)
    keep = torch.randperm(tokens.count, generator=generator)[: max(1, tokens.count // 4)]
    return keep.sort().values


# ---- 2. pruned prefill == hand-built -------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("task", ["image", "video"])
@torch.inference_mode()
def test_pruned_prefill_matches_hand_built_reference(name, task, samples):
    m = model(f"{name}:preset=tiny-random")
    tokens = encode(m, samples[task])
    keep = pruned_plan(tokens)
    pre = m.prefill(tokens.state, PrunePlan(keep=keep))
    embeds, positions, next_position = hand_built(m, tokens.state, keep)
    logits, hidden = forward(m, embeds, positions)
    assert pre.pruned.length == embeds.shape[1] == tokens.state.input_ids.shape[1] - tokens.count + keep.numel()
    assert torch.equal(pre.pruned.position_ids, positions)
    assert pre.pruned.next_position == next_position
    torch.testing.assert_close(pre.hidden, hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.lm_head(pre.hidden).float(), logits.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pre.logits[0, -1], logits[0, -1].float(), rtol=1e-5, atol=1e-5)


# ---- 3. decoding after a pruned prefill == hand-built, token by token ------------------------------


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("fixed_head", [True, False])
@torch.inference_mode()
def test_decoding_after_pruned_prefill_matches_hand_built(name, fixed_head, samples, free_running):
    m = model(f"{name}:preset=tiny-random")
    if not fixed_head:
        free_running(m)
    tokens = encode(m, samples["video"])
    keep = pruned_plan(tokens)
    gen = m.greedy(m.prefill(tokens.state, PrunePlan(keep=keep)))
    embeds, positions, next_position = hand_built(m, tokens.state, keep)
    table = m.net.vlm.get_input_embeddings()
    ids, seg_hidden = [], []
    for step in range(m.config.max_new_tokens):
        logits, hidden = forward(m, embeds, positions)  # no cache: the whole sequence again
        if step and ids[-1] == m.seg_id:
            seg_hidden.append(hidden[0, -1])
        torch.testing.assert_close(gen.logits[step], logits[0, -1].float(), rtol=1e-4, atol=1e-4)
        token = int(logits[0, -1].argmax())
        ids.append(token)
        if token in m.stop_ids or len(ids) >= m.config.max_new_tokens:
            break
        embeds = torch.cat([embeds, table(torch.tensor([[token]]))], 1)
        position = torch.full(positions.shape[:-1] + (1,), next_position + step, dtype=positions.dtype)
        positions = torch.cat([positions, position], -1)
    assert gen.ids == ids
    assert len(gen.seg_hidden) == len(seg_hidden)
    for got, want in zip(gen.seg_hidden, seg_hidden):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    if fixed_head:
        assert ids == [m.seg_id, m.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    else:
        assert len(ids) > 2


# ---- the pure hook ---------------------------------------------------------------------------------


def test_hook_keeps_original_positions_or_renumbers():
    embeds = torch.arange(10.0).repeat(3, 1).T[None]  # [1, 10, 3], row i holds i
    visual = torch.tensor([2, 3, 4, 5, 6])
    mrope = torch.stack([torch.arange(10), torch.arange(10) * 2, torch.arange(10) * 3])[:, None]  # [3, 1, 10]
    keep = torch.tensor([1, 4])
    out = prune_prefill(embeds, mrope, visual, next_position=42, keep=keep)
    assert out.sequence_index.tolist() == [0, 1, 3, 6, 7, 8, 9]
    assert out.inputs_embeds[0, :, 0].tolist() == [0, 1, 3, 6, 7, 8, 9]
    assert torch.equal(out.position_ids, mrope[..., out.sequence_index]) and out.next_position == 42
    assert out.attention_mask.shape == (1, 7) and out.full_length == 10
    renumbered = prune_prefill(embeds, mrope, visual, next_position=42, keep=keep, positions="renumber")
    assert renumbered.position_ids.tolist() == [[list(range(7))]] * 3 and renumbered.next_position == 7
    reference = prune_prefill(embeds, mrope, visual, next_position=42, positions="renumber")  # no plan: own ids
    assert torch.equal(reference.position_ids, mrope) and reference.next_position == 42
    merged = prune_prefill(embeds, torch.arange(10)[None], visual, 10, keep=keep, features=torch.full((2, 3), -1.0))
    assert merged.inputs_embeds[0, :, 0].tolist() == [0, 1, -1, -1, 7, 8, 9]
    assert prune_prefill(embeds, torch.arange(10)[None], visual, 10).length == 10
    with pytest.raises(ValueError):
        prune_prefill(embeds, torch.arange(10)[None], visual, 10, keep=torch.tensor([3, 1]))


# ---- 4. weight mapping round trip ------------------------------------------------------------------

# names as published Sa2VA checkpoints spell them (SAM2 original names, `.gamma` saved as `.g_weight`)
GROUNDING_NAMES = [
    "grounding_encoder.sam2_model.image_encoder.trunk.pos_embed",
    "grounding_encoder.sam2_model.image_encoder.trunk.patch_embed.proj.weight",
    "grounding_encoder.sam2_model.image_encoder.trunk.blocks.0.attn.qkv.weight",
    "grounding_encoder.sam2_model.image_encoder.trunk.blocks.1.mlp.layers.1.bias",
    "grounding_encoder.sam2_model.image_encoder.neck.convs.0.conv.weight",
    "grounding_encoder.sam2_model.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    "grounding_encoder.sam2_model.sam_prompt_encoder.point_embeddings.3.weight",
    "grounding_encoder.sam2_model.sam_prompt_encoder.mask_downscaling.6.weight",
    "grounding_encoder.sam2_model.sam_mask_decoder.transformer.layers.1.cross_attn_image_to_token.out_proj.weight",
    "grounding_encoder.sam2_model.sam_mask_decoder.transformer.norm_final_attn.weight",
    "grounding_encoder.sam2_model.sam_mask_decoder.output_hypernetworks_mlps.3.layers.2.weight",
    "grounding_encoder.sam2_model.sam_mask_decoder.pred_obj_score_head.layers.1.weight",
    "grounding_encoder.sam2_model.sam_mask_decoder.output_upscaling.1.weight",
    "grounding_encoder.sam2_model.memory_attention.layers.0.cross_attn_image.k_proj.weight",
    "grounding_encoder.sam2_model.memory_attention.norm.weight",
    "grounding_encoder.sam2_model.memory_encoder.mask_downsampler.encoder.12.weight",
    "grounding_encoder.sam2_model.memory_encoder.fuser.layers.0.g_weight",
    "grounding_encoder.sam2_model.memory_encoder.pix_feat_proj.weight",
    "grounding_encoder.sam2_model.maskmem_tpos_enc",
    "grounding_encoder.sam2_model.obj_ptr_proj.layers.2.weight",
    "text_hidden_fcs.0.weight",
    "text_hidden_fcs.2.bias",
]
VLM_NAMES = {
    "sa2va-qwen": [
        "model.model.visual.patch_embed.proj.weight",
        "model.model.visual.blocks.1.attn.qkv.weight",
        "model.model.visual.merger.mlp.2.weight",
        "model.model.language_model.layers.1.self_attn.q_proj.bias",
        "model.model.language_model.norm.weight",
        "model.lm_head.weight",
    ],
    "sa2va-internvl": [
        "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.encoder.layers.1.attn.qkv.weight",
        "vision_model.encoder.layers.1.attn.qkv.bias",
        "vision_model.encoder.layers.0.ls1",
        "vision_model.encoder.layers.0.norm2.bias",
        "mlp1.0.weight",
        "mlp1.3.weight",
        "language_model.model.layers.1.mlp.down_proj.weight",
        "language_model.lm_head.weight",
    ],
}


def read_checkpoint(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def write_checkpoint(path, state):
    from safetensors.torch import save_file

    save_file(state, str(path / "model.safetensors"))


@pytest.mark.parametrize("name", FAMILIES)
def test_weight_mapping_round_trip(name, tmp_path):
    original = model(f"{name}:preset=tiny-random")
    folder = original.save_sa2va(tmp_path / "ckpt")
    state = read_checkpoint(folder)
    missing = [n for n in GROUNDING_NAMES + VLM_NAMES[name] if n not in state]
    assert not missing, f"not in Sa2VA's layout: {missing}"
    assert not any(k.startswith(("vlm.", "sam.", "seg_proj.")) for k in state)
    loaded = load_model(f"{name}:path={folder}")
    want, got = original.net.state_dict(), loaded.net.state_dict()
    assert set(want) == set(got)
    assert [k for k in want if not torch.equal(want[k], got[k])] == []


def test_weight_mapping_reads_older_layouts_and_lists_bad_names(tmp_path):
    folder = model("sa2va-qwen:preset=tiny-random").save_sa2va(tmp_path / "ckpt")
    state = read_checkpoint(folder)
    legacy = {}
    for key, value in state.items():  # transformers < 4.52 layout, SAM2's own `gamma`
        key = key.replace("model.model.visual.", "model.visual.").replace("model.model.language_model.", "model.model.")
        legacy[key.replace(".g_weight", ".gamma")] = value
    write_checkpoint(folder, legacy)
    loaded = load_model(f"sa2va-qwen:path={folder}")
    assert torch.equal(loaded.net.vlm.model.visual.patch_embed.proj.weight, state["model.model.visual.patch_embed.proj.weight"])

    broken = dict(state)
    broken["grounding_encoder.sam2_model.extra_head.weight"] = torch.zeros(2)
    del broken["model.model.language_model.layers.0.mlp.up_proj.weight"]
    write_checkpoint(folder, broken)
    with pytest.raises(EvtpError) as exc:
        load_model(f"sa2va-qwen:path={folder}")
    message = str(exc.value)
    assert "grounding_encoder.sam2_model.extra_head.weight" in message
    assert "vlm.model.language_model.layers.0.mlp.up_proj.weight" in message


def test_loader_errors_name_the_path_and_the_variant(tmp_path):
    with pytest.raises(EvtpError) as exc:
        load_model(f"sa2va-internvl:path={tmp_path / 'nowhere'}")
    assert "nowhere" in str(exc.value) and "config.json" in str(exc.value)
    folder = model("sa2va-internvl:preset=tiny-random").save_sa2va(tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["llm_config"]["architectures"] = ["InternLM2ForCausalLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(EvtpError) as exc:
        load_model(f"sa2va-internvl:path={folder}")
    assert "InternLM2" in str(exc.value) and "out of scope" in str(exc.value)
    with pytest.raises(EvtpError) as exc:
        load_model(f"sa2va-qwen:path={folder}")
    assert "sa2va-internvl" in str(exc.value)
    with pytest.raises(EvtpError) as exc:
        load_model("sa2va-qwen")
    assert "path=" in str(exc.value) and "preset=" in str(exc.value)


# ---- real-size presets: shapes only, on the meta device (never instantiated on this CPU) ---------------


@pytest.mark.parametrize(
    "spec, llm_millions, vision_millions",
    [("sa2va-qwen:preset=7b-random", 7616, 677), ("sa2va-qwen:preset=3b-random", 3397, 669),
     ("sa2va-internvl:preset=4b-random", 3396, 317), ("sa2va-internvl:preset=8b-random", 7613, 332)],
)
def test_real_size_presets_have_the_published_shapes(spec, llm_millions, vision_millions):
    m = load_model(spec, device="meta", dtype="bf16")
    counts = m.info()["parameters"]
    assert counts["llm"] / 1e6 == pytest.approx(llm_millions, rel=2e-3)
    assert counts["vision"] / 1e6 == pytest.approx(vision_millions, rel=2e-3)
    assert counts["sam2"] / 1e6 == pytest.approx(224.4, rel=2e-3)  # SAM2 Hiera-L
    assert m.net.sam.config.image_size == 1024
    assert m.prefill_flops(4096) > m.prefill_flops(819) * 4


# ---- evtp prune-eval ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_prune_eval_runs_and_keeps_a_quarter(name, tmp_path, capsys):
    from evtp_cli.cli import main

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["prune-eval", "--model", f"{name}:preset=tiny-random", "--dataset", "synthetic-image:n=3",
              "--dataset", "synthetic-video:n=2", "--pruner", "evtp", "--ratio", "0.25", "--output", str(out)])
    assert exc.value.code == 0, capsys.readouterr().err
    rows = read_results(out)["rows"]
    pruned = [r for r in rows if r["pruner"] == "evtp"]
    assert {r["task"] for r in pruned} == {"image", "video"}
    for row in rows:
        assert row["n_samples"] > 0 and not row.get("n_failed")
        assert row["ms_prefill"] > 0 and row["ms_mask"] > 0
    for row in pruned:
        assert row["tokens_kept"] / row["tokens_total"] == pytest.approx(0.25, abs=0.02)
