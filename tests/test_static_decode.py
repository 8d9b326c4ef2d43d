"""`decode=static` on the Sa2VA backends == `decode=dynamic` (CPU, tiny-random presets; the CUDA-graph case on CUDA only).

The static path runs here without a CUDA graph but on the real static cache: the prefill's keys and values
copied into `StaticCache` slots, per-layer masks from each layer's filled length, steps written in place.
Compared with dynamic decoding after the same prefill (unpruned, pruned before the LLM with original
positions, pruned inside the LLM so that layers hold unequal lengths): the same generated ids, and logits
and [SEG] hidden states equal up to float rounding (attention reduces over the padded static slots, so the
last bits may differ; see evtp_cli/models/sa2va_static.py).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from conftest import cached_model as model
from test_sa2va_baselines import free_running

from evtp_cli.api import LayerPrune, PrunePlan
from evtp_cli.bench.evaluate import run_sample
from evtp_cli.errors import EvtpError
from evtp_cli.metrics.timing import StageTimer
from evtp_cli.models import load_model
from evtp_cli.models.sa2va_static import BUCKET
from evtp_cli.pruners import get_pruner

pytestmark = pytest.mark.usefixtures("one_thread")

SPECS = ["sa2va-qwen:preset=tiny-random", "sa2va-internvl:preset=tiny-random", "sa2va-qwen:preset=tiny-random,attn=eager"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@contextlib.contextmanager
def answer_head(m, kind: str):
    """Six-token answers. "free": a random head (`free_running`); "seg": the random preset's head with the end
    token's row silenced, so that it answers [SEG] at every step (a [SEG] hidden state per step)."""
    rigged = m.net.vlm.lm_head.weight.detach().clone()
    with free_running(m, max_new_tokens=6):  # restores the head and the token budget afterwards
        if kind == "seg":
            with torch.inference_mode():
                weight = m.net.vlm.lm_head.weight
                weight.copy_(rigged)
                for stop in m.stop_ids:
                    weight[stop].zero_()
                weight[m.seg_id, 0] *= 4
        yield m


def in_llm_plan(n: int) -> PrunePlan:
    def prune(state):  # before layer 2: every other visual token (layers 2-3 cache fewer tokens than 0-1)
        return LayerPrune(torch.arange(0, state.visual.numel(), 2)) if state.layer == 2 else None

    return PrunePlan(inner=prune, inner_stage="llm", inner_layers=(2,))


PLANS = {
    "unpruned": lambda n: PrunePlan(),
    "pre-llm": lambda n: PrunePlan(keep=torch.arange(1, n, 3)),
    "in-llm": in_llm_plan,
}


def generate(m, tokens, plan: PrunePlan, decode: str):
    m.config.decode = decode
    try:
        with torch.inference_mode(), contextlib.ExitStack() as stack:
            pre = m.prefill(tokens.state, plan, stack)
            lengths = [int(layer.keys.shape[-2]) for layer in pre.cache.layers]
            gen = m.greedy(pre)
    finally:
        m.config.decode = "dynamic"
    return gen, lengths


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("task", ["image", "video"])
@pytest.mark.parametrize("plan", list(PLANS))
@pytest.mark.parametrize("head", ["seg", "free"])
def test_static_decoding_equals_dynamic(spec, task, plan, head, samples):
    m = model(spec)
    with answer_head(m, head):
        tokens = m.encode(samples[task], StageTimer())
        the_plan = PLANS[plan](tokens.count)
        dynamic, lengths = generate(m, tokens, the_plan, "dynamic")
        static, _ = generate(m, tokens, the_plan, "static")
    assert static.mode == "static" and dynamic.mode == "dynamic"
    assert len(dynamic.ids) == 6 and static.ids == dynamic.ids
    assert static.steps == dynamic.steps == 5
    if head == "seg":
        assert len(dynamic.seg_hidden) == 5 and len(static.seg_hidden) == 5
    for a, b in zip(static.seg_hidden, dynamic.seg_hidden):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert len(static.logits) == len(dynamic.logits)
    assert torch.equal(static.logits[0], dynamic.logits[0])  # the prefill is the same one
    for a, b in zip(static.logits, dynamic.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    decoder = m._static.get(lengths[0] + 6)
    assert decoder.length % BUCKET == 0 and decoder.length >= lengths[0] + 6
    assert decoder.filled() == [n + static.steps for n in lengths]  # every layer at its own length
    if plan == "in-llm":
        assert lengths[2] < lengths[0]


@pytest.mark.parametrize("spec", SPECS[:2])
def test_static_decode_through_the_evaluation_loop(spec, samples):
    """run_sample with decode=static: same answers and masks as dynamic, image then video then image again
    (the static caches are reused across samples; slots a longer sample filled are masked, not cleared)."""
    m = model(spec)
    pruner = get_pruner("evtp")
    try:
        for task in ("image", "video", "image"):
            out = {}
            for decode in ("dynamic", "static"):
                m.config.decode = decode
                out[decode] = run_sample(m, samples[task], pruner, 0.25, 0)[0]
            assert out["static"].extras["decode_mode"] == "static"
            assert out["static"].extras["generated_ids"] == out["dynamic"].extras["generated_ids"]
            assert out["static"].extras["seg_tokens"] == out["dynamic"].extras["seg_tokens"] == 1
            assert np.mean(out["static"].masks == out["dynamic"].masks) > 0.999
    finally:
        m.config.decode = "dynamic"


def test_static_decode_options_are_checked():
    with pytest.raises(EvtpError, match="pipeline=hooked"):
        load_model("sa2va-qwen:preset=tiny-random,pipeline=generate,decode=static")
    with pytest.raises(ValueError, match="decode"):
        load_model("sa2va-qwen:preset=tiny-random,decode=fast")


@cuda
@pytest.mark.parametrize("spec", SPECS[:2])
def test_cuda_graph_decoding_equals_dynamic(spec, samples):
    m = load_model(spec, device="cuda", dtype="fp32")
    with answer_head(m, "seg"):
        tokens = m.encode(samples["video"], StageTimer("cuda"))
        for plan in PLANS.values():
            dynamic, _ = generate(m, tokens, plan(tokens.count), "dynamic")
            static, _ = generate(m, tokens, plan(tokens.count), "static")
            assert static.mode == "static+cuda-graph", static.fallback
            assert static.ids == dynamic.ids
            for a, b in zip(static.seg_hidden, dynamic.seg_hidden):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
