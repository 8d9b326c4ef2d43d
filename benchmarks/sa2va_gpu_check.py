"""One-GPU check of the Sa2VA backends at real size with random weights (run by benchmarks/gpu_check.sh).

For each model it builds the real-size random preset, then on a synthetic 1008 px image and a synthetic
16-frame 448 px video (all 16 frames to the LLM, 256 visual tokens a frame, 4096 in all) it

- checks that the fast EVTP selection returns the straightforward one's indices on this device (the
  core of tests/test_select_fast.py -k cuda, for machines without pytest);
- checks the hook: ratio 1.0 through the pruning hook vs transformers' own `generate` (same ids, same
  masks) on the image;
- (b) times ratio 1.0 (no pruning) and ratio 0.2 (EVTP) per stage with CUDA events after a warm-up run
  (median of `--repeats` runs), with the end-to-end and the prefill speed-up against ratio 1.0;
- (c) times the same with `decode=static` (static KV cache, each decode step a CUDA graph), checks that it
  generates the ids `decode=dynamic` does, and times a free-running `--answer-tokens` answer (16 tokens)
  both ways, where per-token launch overhead shows;
- (d) times `evtp:at=vision-layer-L` at 0.2 (selection inside the vision tower, so the later vision blocks
  run on the kept tokens only) for `--vision-layers` (Qwen: full-attention blocks 7, 15, 23) next to
  pre-LLM EVTP;
- times one vision-stage and one in-LLM baseline at 0.2 the same way (`--extra-pruners`, default
  visionzip and fastv), with time to the first token, analytic prefill GFLOPs and peak memory per row;
- with flash-attn installed (full mode), re-times the image at both ratios with attn=flash_attention_2
  and checks that it generates the same ids as sdpa.

It prints the stage table, then (c) and (d) side by side. `--quick`: Qwen2.5-VL-7B shape only, one timed
run per setting, one vision layer, no baselines, no flash-attn pass. `--tiny --device cpu` runs the same
code on the tiny-random presets (what CI can afford). Nothing is downloaded; nothing here imports
pycocotools or decord.

    PYTHONPATH=. python -m benchmarks.sa2va_gpu_check [--quick] [--output DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

MODELS_FULL = ["sa2va-qwen:preset=7b-random", "sa2va-internvl:preset=4b-random", "sa2va-internvl:preset=8b-random"]
MODELS_QUICK = ["sa2va-qwen:preset=7b-random"]
MODELS_TINY = ["sa2va-qwen:preset=tiny-random", "sa2va-internvl:preset=tiny-random"]
STAGES = ("vision", "select", "prefill", "decode", "mask")
VIDEO_SIDE = 448  # one InternVL tile; Qwen gets 448x448 frames too: 16x16 merged tokens a frame


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one model (Qwen 7B shape), one timed run per setting, fewer extras")
    p.add_argument("--tiny", action="store_true", help="tiny-random presets (CPU smoke test of this script)")
    p.add_argument("--models", nargs="*", help="model specs (default: by mode)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--ratios", nargs="*", type=float, default=[1.0, 0.2])
    p.add_argument("--pruner", default="evtp")
    p.add_argument("--extra-pruners", nargs="*", default=None,
                   help="baselines also timed at the lowest ratio below 1 (default visionzip fastv; none with --quick)")
    p.add_argument("--vision-layers", nargs="*", type=int, default=None,
                   help="vision blocks for evtp:at=vision-layer-L at the lowest ratio (default: Qwen's full-attention blocks "
                        "but the last, InternViT's middle layer; --quick: one; give none to skip)")
    p.add_argument("--no-static", action="store_true", help="skip the decode=static rows")
    p.add_argument("--answer-tokens", type=int, default=16, help="also time a free-running answer of this many tokens, "
                   "dynamic vs static decoding (image, lowest ratio; 0: skip)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per setting (default 3, --quick 1)")
    p.add_argument("--budget", type=float, default=None, help="seconds; models not started by then are skipped (default 300, --quick 240)")
    p.add_argument("--output", default=None, help="folder for gpu_check.json (default runs/gpu-check-<time>)")
    return p.parse_args(argv)


def fail(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def environment(device: str) -> dict:
    import torch
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0]}
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            fail("torch sees no CUDA device (torch.cuda.is_available() is False); run on the GPU machine or pass --tiny --device cpu")
        info["device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = "cpu"
    try:
        import flash_attn

        info["flash_attn"] = flash_attn.__version__
    except ImportError:
        info["flash_attn"] = None
    return info


def inputs(tiny: bool):
    """A synthetic image (1008 px) and a synthetic 16-frame video (448 px)."""
    from evtp_cli.data import load_dataset

    if tiny:
        return load_dataset("synthetic-image:n=1")[0], load_dataset("synthetic-video:n=1")[0]
    image = load_dataset("synthetic-image:n=1,size=1008,cache=false")[0]
    video = load_dataset(f"synthetic-video:n=1,size={VIDEO_SIDE},frames=16,cache=false")[0]
    return image, video


@dataclasses.dataclass
class Row:
    model: str
    input: str
    attn: str
    pruner: str
    ratio: float
    tokens_total: int
    tokens_kept: int
    prefill_length: int
    decode_steps: int
    ms: dict
    decode: str = "dynamic"
    answer: str = "[SEG]"  # the rigged random answer, or "N tokens" (free-running head)
    speedup: float | None = None
    prefill_speedup: float | None = None
    gflops_prefill: float | None = None
    mem_peak_mb: float | None = None
    generated_ids: list | None = None  # the last repeat's answer, for the decode=static vs dynamic check
    decode_fallback: str | None = None


def measure(model, sample, pruner, ratio: float, repeats: int, label: str, name: str | None = None) -> Row:
    from evtp_cli.bench.evaluate import run_sample

    use = None if ratio >= 1.0 else pruner
    run_sample(model, sample, use, ratio, 0)  # warm-up (allocations, kernels, autotuning, CUDA-graph capture)
    runs = [run_sample(model, sample, use, ratio, 0) for _ in range(repeats)]
    prediction, _, total, kept = runs[-1]
    ms = {stage: statistics.median(r[1][stage] for r in runs) for stage in (*STAGES, "total", "ttft")}
    extras = prediction.extras
    name = "none" if use is None else (name or pruner.name)
    mem = max((r[0].extras.get("mem_peak_mb") or 0.0) for r in runs) or None
    return Row(model.name, label, model.config.attn, name, ratio, total, kept, extras["prefill_length"], extras["decode_steps"], ms,
               decode=extras.get("decode_mode", "dynamic"), gflops_prefill=extras.get("gflops_prefill"), mem_peak_mb=mem,
               generated_ids=extras.get("generated_ids"), decode_fallback=extras.get("decode_fallback"))


def hook_equivalence(model, sample) -> dict:
    """Ratio 1.0 through the hook vs transformers' generate on the full inputs."""
    import numpy as np
    import torch

    from evtp_cli.api import PrunePlan
    from evtp_cli.metrics.timing import StageTimer

    tokens = model.encode(sample, StageTimer())
    hooked = model.greedy(model.prefill(tokens.state, PrunePlan(keep=torch.arange(tokens.count, device=model.device))))
    reference = model.generate_reference(tokens.state)
    out = {"ids_equal": hooked.ids == reference.ids, "seg_tokens": [len(hooked.seg_hidden), len(reference.seg_hidden)]}
    if hooked.seg_hidden and len(hooked.seg_hidden) == len(reference.seg_hidden):
        diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(hooked.seg_hidden, reference.seg_hidden))
        a, b = model.masks(tokens.state, hooked.seg_hidden), model.masks(tokens.state, reference.seg_hidden)
        out.update(seg_hidden_max_abs_diff=diff, mask_agreement=float(np.mean(a == b)))
    return out


def static_equivalence(rows: list[Row], label: str, pruner: str, ratio: float) -> dict:
    """decode=static vs decode=dynamic after the same (pruned) prefill: the answers of the image rows (b) and (c)."""
    by_mode = {r.decode: r for r in rows if (r.model, r.input, r.pruner, r.ratio, r.answer) == (label, "image", pruner, ratio, "[SEG]")}
    if set(by_mode) != {"dynamic", "static"}:
        return {"ids_equal": False, "error": f"measured only decode={sorted(by_mode) or 'none'} (see the notes' errors)"}
    static = by_mode["static"]
    return {"ids_equal": static.generated_ids == by_mode["dynamic"].generated_ids,
            **({"fallback": static.decode_fallback} if static.decode_fallback else {})}


class decode_mode:  # noqa: N801 - used as a context manager
    """Switch a Sa2VA backend's `decode` key for a while."""

    def __init__(self, model, mode: str):
        self.model, self.mode = model, mode

    def __enter__(self):
        self.saved = self.model.config.decode
        self.model.config.decode = self.mode

    def __exit__(self, *exc):
        self.model.config.decode = self.saved


class free_answer:  # noqa: N801 - used as a context manager
    """A random answer head and `tokens` new tokens (a free-running answer of that length), restored afterwards."""

    def __init__(self, model, tokens: int):
        self.model, self.tokens = model, tokens

    def __enter__(self):
        import torch

        weight = self.model.net.vlm.lm_head.weight
        self.saved = (weight.detach().clone(), self.model.config.max_new_tokens)
        with torch.inference_mode():
            generator = torch.Generator(device=weight.device).manual_seed(3)
            weight.copy_(torch.randn(weight.shape, generator=generator, device=weight.device, dtype=weight.dtype) * 0.05)
        self.model.config.max_new_tokens = self.tokens

    def __exit__(self, *exc):
        import torch

        with torch.inference_mode():
            self.model.net.vlm.lm_head.weight.copy_(self.saved[0])
        self.model.config.max_new_tokens = self.saved[1]


def set_video_mode(model, on: bool, saved: dict, tiny: bool) -> None:
    """All 16 frames to the LLM; Qwen frames kept at 448x448 (256 merged tokens each, not with --tiny)."""
    if on:
        saved["frames"] = model.config.frames
        model.config.frames = "all"
        if hasattr(model, "patching") and not tiny:
            saved["patching"] = model.patching
            side = VIDEO_SIDE * VIDEO_SIDE
            model.patching = dataclasses.replace(model.patching, min_pixels=side, max_pixels=side)
    else:
        model.config.frames = saved.pop("frames")
        if "patching" in saved:
            model.patching = saved.pop("patching")


def add_speedups(rows: list[Row]) -> None:
    """Against the ratio-1.0 row of the same model, input, attention, decoding and answer."""

    def key(r: Row) -> tuple:
        return r.model, r.input, r.attn, r.decode.split("+")[0], r.answer

    for row in rows:
        ref = next((r for r in rows if key(r) == key(row) and r.pruner == "none"), None)
        if ref is not None and row.ms["total"] > 0:
            row.speedup = ref.ms["total"] / row.ms["total"]
            row.prefill_speedup = ref.ms["prefill"] / row.ms["prefill"] if row.ms["prefill"] > 0 else None


def table(rows: list[Row]) -> str:
    head = (f"{'model':<26} {'input':<6} {'attn':<6} {'decode':<7} {'answer':<9} {'pruner':<24} {'ratio':>5} {'tokens':>11} {'seq':>6} "
            + " ".join(f"{s:>8}" for s in STAGES))
    head += f" {'total':>8} {'ttft':>8} {'ms/tok':>7} {'speedup':>8} {'prefill×':>8} {'GFLOPs':>8} {'mem MB':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        decode = "graph" if r.decode.endswith("cuda-graph") else r.decode[:7]
        line = (f"{r.model:<26} {r.input:<6} {r.attn[:6]:<6} {decode:<7} {r.answer[:9]:<9} {r.pruner[:24]:<24} {r.ratio:>5.2f} "
                f"{f'{r.tokens_kept}/{r.tokens_total}':>11} {r.prefill_length:>6} ")
        line += " ".join(f"{r.ms[s]:>8.1f}" for s in STAGES) + f" {r.ms['total']:>8.1f} {r.ms['ttft']:>8.1f} {per_token(r):>7.1f}"
        line += f" {r.speedup or float('nan'):>7.2f}× {r.prefill_speedup or float('nan'):>7.2f}×"
        line += f" {r.gflops_prefill or float('nan'):>8.4g} {r.mem_peak_mb or float('nan'):>8.0f}"
        lines.append(line)
    return "\n".join(lines)


def pair(a: float | None, b: float | None, unit: str = "", digits: int = 1) -> str:
    nan = float("nan")
    return f"{a if a is not None else nan:.{digits}f}{unit} → {b if b is not None else nan:.{digits}f}{unit}"


def per_token(r: Row) -> float:
    return r.ms["decode"] / r.decode_steps if r.decode_steps else float("nan")


def static_table(rows: list[Row]) -> str:
    """(c) decode=static next to decode=dynamic for the same settings."""
    lines = [f"{'model':<26} {'input':<6} {'answer':<9} {'pruner':<10} {'ratio':>5} {'decode ms':>16} {'ms/token':>16} "
             f"{'total ms':>18} {'e2e speed-up':>16}   (dynamic → static)"]
    for r in rows:
        if r.decode == "dynamic":
            continue
        same = (r.model, r.input, r.attn, r.answer, r.pruner, r.ratio)
        d = next((x for x in rows if x.decode == "dynamic" and (x.model, x.input, x.attn, x.answer, x.pruner, x.ratio) == same), None)
        if d is None:
            continue
        lines.append(f"{r.model:<26} {r.input:<6} {r.answer[:9]:<9} {r.pruner[:10]:<10} {r.ratio:>5.2f} {pair(d.ms['decode'], r.ms['decode']):>16} "
                     f"{pair(per_token(d), per_token(r)):>16} {pair(d.ms['total'], r.ms['total']):>18} {pair(d.speedup, r.speedup, '×', 2):>16}")
    return "\n".join(lines)


def vision_layer_table(rows: list[Row], name: str = "evtp") -> str:
    """(d) evtp:at=vision-layer-L next to pre-LLM EVTP at the same ratio (dynamic decoding)."""
    lines = [f"{'model':<26} {'input':<6} {'pruner':<24} {'ratio':>5} {'vision ms':>10} {'select ms':>10} {'prefill ms':>10} "
             f"{'total ms':>10} {'e2e speed-up':>12} {'prefill×':>9}"]
    for r in rows:
        if r.decode != "dynamic" or r.answer != "[SEG]" or not (r.pruner == name or r.pruner.startswith(f"{name}:at=vision-layer")):
            continue
        lines.append(f"{r.model:<26} {r.input:<6} {r.pruner:<24} {r.ratio:>5.2f} {r.ms['vision']:>10.1f} {r.ms['select']:>10.1f} "
                     f"{r.ms['prefill']:>10.1f} {r.ms['total']:>10.1f} {r.speedup or float('nan'):>11.2f}× {r.prefill_speedup or float('nan'):>8.2f}×")
    return "\n".join(lines)

def selection_equality(device: str) -> dict:
    """The fast EVTP selection == the straightforward one on this device (what tests/test_select_fast.py -k cuda
    checks, for machines without pytest): images and 16-frame videos, both modes, k = 1, N/5, N-1; on CUDA
    also the Triton kernel against the torch loop."""
    import torch

    from evtp_cli.api import frame_index
    from evtp_cli.pruners.evtp import evtp_select, evtp_select_reference

    generator = torch.Generator().manual_seed(0)
    checked, wrong = 0, []
    triton_error = None  # once Triton fails to run, only its comparisons are skipped
    for frames, side, width in ((1, 16, 64), (16, 16, 256)):
        t = torch.arange(frames, dtype=torch.float32) / max(frames - 1, 1)
        yx = (torch.arange(side, dtype=torch.float32) + 0.5) / side
        coords = torch.stack([c.flatten() for c in torch.meshgrid(t, yx, yx, indexing="ij")], 1).to(device)
        features = torch.randn(coords.shape[0], width, generator=generator).to(device)
        n, ids = coords.shape[0], frame_index(coords)
        for mode in ("global", "per-frame"):
            for lam, beta, tau in ((0.5, 0.0, 1.0), (0.3, 1.0, 2.0)):
                options = dict(spatial_weight=lam, info_weight=beta, temporal_scale=tau, mode=mode)
                for k in (1, n // 5, n - 1):
                    checked += 1
                    if evtp_select(features, coords, k, ids, **options).tolist() != evtp_select_reference(features, coords, k, ids, **options).tolist():
                        wrong.append(f"{frames}x{side * side} {mode} λ={lam} β={beta} τ={tau} k={k}")
            if device.startswith("cuda") and triton_error is None:
                try:
                    a = evtp_select(features, coords, n // 5, ids, info_weight=0.5, mode=mode, backend="triton")
                except Exception as exc:  # noqa: BLE001 - no Triton: said, not failed
                    triton_error = f"{type(exc).__name__}: {exc}"
                    continue
                b = evtp_select(features, coords, n // 5, ids, info_weight=0.5, mode=mode, backend="torch")
                checked += 1
                if a.tolist() != b.tolist():
                    wrong.append(f"triton != torch loop, {frames}x{side * side} {mode}")
    result = {"check": "selection fast == reference", "checked": checked, "wrong": wrong, "ids_equal": not wrong}
    if triton_error is not None:
        result["triton"] = triton_error
    return result


def default_vision_layers(model, quick: bool) -> list[int]:
    """Qwen: the full-attention blocks but the last (after the last one only the merger is left to shrink);
    InternViT: its middle layer. --quick: the middle choice only."""
    layers = model.vision_layers()
    chosen = (layers[:-1] or layers) if model.name == "sa2va-qwen" else layers[len(layers) // 2 : len(layers) // 2 + 1]
    return chosen[len(chosen) // 2 : len(chosen) // 2 + 1] if quick else chosen


def run_model(spec, args, image, video, pruner, rows, notes, env, extra=()) -> None:
    import torch

    from evtp_cli.api import PrunePlan
    from evtp_cli.errors import EvtpError, PrunerNotApplicable
    from evtp_cli.metrics.timing import StageTimer
    from evtp_cli.models import load_model
    from evtp_cli.pruners import get_pruner

    t0 = time.perf_counter()
    options = {"device": args.device, "dtype": args.dtype}
    if args.device == "cpu":
        options["dtype"] = "fp32"
    model = load_model(spec, **options)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    label = spec.split(":", 1)[0] + ":" + spec.split("preset=", 1)[-1]
    print(f"[{label}] built in {time.perf_counter() - t0:.1f} s; parameters {model.info()['parameters']}", flush=True)
    eq = hook_equivalence(model, image)
    notes.append({"model": label, "check": "ratio 1.0 hooked vs transformers generate (image)", **eq})
    print(f"[{label}] hook at ratio 1.0 vs generate: {eq}", flush=True)
    pruned = [r for r in args.ratios if r < 1.0]
    low = min(pruned) if pruned else None
    layers = default_vision_layers(model, args.quick) if args.vision_layers is None else args.vision_layers
    in_tower = []
    for layer in layers if low is not None else []:
        try:
            model.check_vision_layer(layer)
            in_tower.append((get_pruner(args.pruner, at=f"vision-layer-{layer}"), f"{pruner.name}:at=vision-layer-{layer}"))
        except (EvtpError, ValueError) as exc:
            notes.append({"model": label, "vision_layer": layer, "skipped": str(exc)})

    def record(row: Row | None, answer: str = "[SEG]") -> None:
        if row is None:
            return
        row.model, row.answer = label, answer
        rows.append(row)
        print(f"[{label}] {row.input} {row.pruner} ratio {row.ratio:.2f} decode {row.decode} answer {answer}: "
              f"tokens {row.tokens_kept}/{row.tokens_total}, total {row.ms['total']:.1f} ms", flush=True)

    def timed(sample, name, use, ratio, title=None) -> Row | None:
        what = {"model": label, "input": name, "pruner": title or getattr(use, "name", "none"), "ratio": ratio, "decode": model.config.decode}
        try:
            return measure(model, sample, use, ratio, args.repeats, name, title)
        except PrunerNotApplicable as exc:
            notes.append({**what, "not_applicable": str(exc)})
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one setting failing costs that row only
            notes.append({**what, "error": f"{type(exc).__name__}: {exc}"})
            traceback.print_exc()
        return None

    for sample, name in ((image, "image"), (video, "video")):
        saved: dict = {}
        if name == "video":
            set_video_mode(model, True, saved, args.tiny)
        try:
            for ratio in args.ratios:  # (b) prefill and end-to-end speed-ups, dynamic decoding
                record(timed(sample, name, pruner, ratio))
            if not args.no_static:  # (c) the same with decode=static
                with decode_mode(model, "static"):
                    for ratio in args.ratios:
                        record(timed(sample, name, pruner, ratio))
            for use, title in in_tower:  # (d) selection inside the vision tower
                record(timed(sample, name, use, low, title))
            for use in extra if low is not None else []:
                record(timed(sample, name, use, low))
        finally:
            if name == "video":
                set_video_mode(model, False, saved, args.tiny)
    if not args.no_static and low is not None:
        check = static_equivalence(rows, label, pruner.name, low)
        notes.append({"model": label, "check": f"decode=static vs dynamic ids (image, {pruner.name} {low})", **check})
        print(f"[{label}] decode=static vs dynamic: {check}", flush=True)
        if args.answer_tokens > 0:
            with free_answer(model, args.answer_tokens):
                for mode in ("dynamic", "static"):
                    with decode_mode(model, mode):
                        for ratio in (1.0, low):
                            record(timed(image, "image", pruner, ratio), f"{args.answer_tokens} tokens")
    if env.get("flash_attn") and not args.quick and args.device.startswith("cuda"):
        def answer():
            return model.decode(image, model.encode(image, StageTimer()), PrunePlan(), StageTimer()).extras["generated_ids"]

        sdpa_ids = answer()
        model.net.vlm.set_attn_implementation("flash_attention_2")
        model.config.attn = "flash_attention_2"
        fa2_ids = answer()
        notes.append({"model": label, "check": "flash_attention_2 vs sdpa ids (image, ratio 1.0)", "ids_equal": fa2_ids == sdpa_ids})
        for ratio in args.ratios:
            record(timed(image, "image", pruner, ratio))
    if args.device.startswith("cuda"):
        notes.append({"model": label, "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)})
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    args.repeats = args.repeats or (1 if args.quick or args.tiny else 3)
    budget = args.budget or (240.0 if args.quick else 300.0)
    models = args.models or (MODELS_TINY if args.tiny else MODELS_QUICK if args.quick else MODELS_FULL)
    if args.extra_pruners is None:
        args.extra_pruners = [] if args.quick else ["visionzip", "fastv"]
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        from transformers import (  # noqa: F401
            InternVLForConditionalGeneration,
            Qwen2_5_VLForConditionalGeneration,
            Sam2VideoModel,
        )
    except ImportError as exc:
        fail(f"cannot import what the check needs ({exc}); it needs torch and transformers with Qwen2.5-VL, InternVL and SAM2 video classes")
    env = environment(args.device)
    print(f"gpu_check: {env}", flush=True)
    from evtp_cli.pruners import get_pruner

    pruner = get_pruner(args.pruner)
    extra = [get_pruner(name) for name in args.extra_pruners if name != args.pruner]
    image, video = inputs(args.tiny)
    rows: list[Row] = []
    notes: list[dict] = [selection_equality(args.device)]
    print(f"gpu_check: {notes[0]}", flush=True)
    failed = []
    try:
        for spec in models:
            elapsed = time.perf_counter() - start
            if elapsed > budget:
                notes.append({"model": spec, "skipped": f"time budget ({elapsed:.0f} s > {budget:.0f} s)"})
                print(f"[{spec}] skipped: time budget", flush=True)
                continue
            try:
                run_model(spec, args, image, video, pruner, rows, notes, env, extra)
            except Exception as exc:  # report and go on with the next model
                failed.append(spec)
                notes.append({"model": spec, "error": f"{type(exc).__name__}: {exc}"})
                traceback.print_exc()
    except KeyboardInterrupt:
        notes.append({"interrupted": f"after {time.perf_counter() - start:.0f} s"})
        print("gpu_check: interrupted (time limit); printing what finished", file=sys.stderr, flush=True)
    add_speedups(rows)
    print()
    print(f"Sa2VA stage table: {env.get('device')} · torch {env['torch']} · transformers {env['transformers']} · "
          f"{'fp32' if args.device == 'cpu' else args.dtype} · median of {args.repeats} run(s) after 1 warm-up · ms per sample · "
          f"ttft: vision + select + prefill + first token · GFLOPs: analytic prefill · mem: CUDA peak allocated")
    print(table(rows))
    if any(r.decode != "dynamic" for r in rows):
        print()
        print("(c) decode=static (static KV cache, each step a CUDA graph on CUDA) against decode=dynamic:")
        print(static_table(rows))
    if any(":at=vision-layer" in r.pruner for r in rows):
        print()
        print(f"(d) selection inside the vision tower ({pruner.name}:at=vision-layer-L) against pre-LLM {pruner.name}, same keep ratio:")
        print(vision_layer_table(rows, pruner.name))
    for note in notes:
        print(f"note: {note}")
    out = Path(args.output) if args.output else Path("runs") / f"gpu-check-{dt.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    record = {"env": env, "args": vars(args), "rows": [dataclasses.asdict(r) for r in rows], "notes": notes,
              "seconds": round(time.perf_counter() - start, 1)}
    (out / "gpu_check.json").write_text(json.dumps(record, indent=2))
    print(f"gpu_check: {len(rows)} rows in {record['seconds']} s; written to {out / 'gpu_check.json'}")
    bad_eq = [n for n in notes if n.get("ids_equal") is False or n.get("mask_agreement", 1.0) < 0.999 or "error" in n]
    if failed or bad_eq:
        print(f"gpu_check: FAILED ({len(failed)} model(s) failed, {len(bad_eq)} equivalence check(s) off or setting(s) failed)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
