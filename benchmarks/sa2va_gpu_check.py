"""One-GPU check of the Sa2VA backends at real size with random weights (run by benchmarks/gpu_check.sh).

For each model it builds the real-size random preset, then on a synthetic 1008 px image and a synthetic
16-frame 448 px video (all 16 frames to the LLM, 256 visual tokens a frame, 4096 in all) it

- checks the hook: ratio 1.0 through the pruning hook vs transformers' own `generate` (same ids, same
  masks) on the image;
- times ratio 1.0 (no pruning) and ratio 0.2 (EVTP) per stage with CUDA events after a warm-up run
  (median of `--repeats` runs), and prints the stage table with the speed-up against ratio 1.0;
- times one vision-stage and one in-LLM baseline at 0.2 the same way (`--extra-pruners`, default
  visionzip and fastv: pruning before the projector vs inside the LLM after layer 2), with time to
  the first token, analytic prefill GFLOPs and peak memory per row;
- with flash-attn installed (full mode), re-times the image at both ratios with attn=flash_attention_2
  and checks that it generates the same ids as sdpa.

`--quick`: Qwen2.5-VL-7B shape only, one timed run per setting, no flash-attn pass. `--tiny --device cpu`
runs the same code on the tiny-random presets (what CI can afford). Nothing is downloaded.

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
    p.add_argument("--quick", action="store_true", help="one model (Qwen 7B shape), one timed run per setting")
    p.add_argument("--tiny", action="store_true", help="tiny-random presets (CPU smoke test of this script)")
    p.add_argument("--models", nargs="*", help="model specs (default: by mode)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--ratios", nargs="*", type=float, default=[1.0, 0.2])
    p.add_argument("--pruner", default="evtp")
    p.add_argument("--extra-pruners", nargs="*", default=["visionzip", "fastv"], help="baselines also timed at the lowest ratio below 1")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per setting (default 3, --quick 1)")
    p.add_argument("--budget", type=float, default=None, help="seconds; models not started by then are skipped (default 420, --quick 240)")
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
    speedup: float | None = None
    prefill_speedup: float | None = None
    gflops_prefill: float | None = None
    mem_peak_mb: float | None = None


def measure(model, sample, pruner, ratio: float, repeats: int, label: str) -> Row:
    from evtp_cli.bench.evaluate import run_sample

    use = None if ratio >= 1.0 else pruner
    run_sample(model, sample, use, ratio, 0)  # warm-up (allocations, kernels, autotuning)
    runs = [run_sample(model, sample, use, ratio, 0) for _ in range(repeats)]
    prediction, _, total, kept = runs[-1]
    ms = {stage: statistics.median(r[1][stage] for r in runs) for stage in (*STAGES, "total", "ttft")}
    extras = prediction.extras
    name = "none" if use is None else pruner.name
    mem = max((r[0].extras.get("mem_peak_mb") or 0.0) for r in runs) or None
    return Row(model.name, label, model.config.attn, name, ratio, total, kept, extras["prefill_length"], extras["decode_steps"], ms,
               gflops_prefill=extras.get("gflops_prefill"), mem_peak_mb=mem)


def hook_equivalence(model, sample) -> dict:
    """Ratio 1.0 through the hook vs transformers' generate on the full inputs."""
    import numpy as np
    import torch

    from evtp_cli.metrics.timing import StageTimer
    from evtp_cli.models.base import PrunePlan

    tokens = model.encode(sample, StageTimer())
    hooked = model.greedy(model.prefill(tokens.state, PrunePlan(keep=torch.arange(tokens.count, device=model.device))))
    reference = model.generate_reference(tokens.state)
    out = {"ids_equal": hooked.ids == reference.ids, "seg_tokens": [len(hooked.seg_hidden), len(reference.seg_hidden)]}
    if hooked.seg_hidden and len(hooked.seg_hidden) == len(reference.seg_hidden):
        diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(hooked.seg_hidden, reference.seg_hidden))
        a, b = model.masks(tokens.state, hooked.seg_hidden), model.masks(tokens.state, reference.seg_hidden)
        out.update(seg_hidden_max_abs_diff=diff, mask_agreement=float(np.mean(a == b)))
    return out


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
    for row in rows:
        ref = next((r for r in rows if (r.model, r.input, r.attn) == (row.model, row.input, row.attn) and r.pruner == "none"), None)
        if ref is not None and row.ms["total"] > 0:
            row.speedup = ref.ms["total"] / row.ms["total"]
            row.prefill_speedup = ref.ms["prefill"] / row.ms["prefill"] if row.ms["prefill"] > 0 else None


def table(rows: list[Row]) -> str:
    head = f"{'model':<34} {'input':<6} {'attn':<6} {'pruner':<9} {'ratio':>5} {'tokens':>11} {'seq':>6} " + " ".join(f"{s:>8}" for s in STAGES)
    head += f" {'total':>8} {'ttft':>8} {'ms/tok':>7} {'speedup':>8} {'prefill×':>8} {'GFLOPs':>8} {'mem MB':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        per_token = r.ms["decode"] / r.decode_steps if r.decode_steps else float("nan")
        line = f"{r.model:<34} {r.input:<6} {r.attn[:6]:<6} {r.pruner[:9]:<9} {r.ratio:>5.2f} {f'{r.tokens_kept}/{r.tokens_total}':>11} {r.prefill_length:>6} "
        line += " ".join(f"{r.ms[s]:>8.1f}" for s in STAGES) + f" {r.ms['total']:>8.1f} {r.ms['ttft']:>8.1f} {per_token:>7.1f}"
        line += f" {r.speedup or float('nan'):>7.2f}× {r.prefill_speedup or float('nan'):>7.2f}×"
        line += f" {r.gflops_prefill or float('nan'):>8.4g} {r.mem_peak_mb or float('nan'):>8.0f}"
        lines.append(line)
    return "\n".join(lines)


def run_model(spec, args, image, video, pruner, rows, notes, env, extra=()) -> None:
    import torch

    from evtp_cli.errors import PrunerNotApplicable
    from evtp_cli.metrics.timing import StageTimer
    from evtp_cli.models import load_model
    from evtp_cli.models.base import PrunePlan

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
    for sample, name in ((image, "image"), (video, "video")):
        saved: dict = {}
        if name == "video":
            set_video_mode(model, True, saved, args.tiny)
        try:
            pruned = [r for r in args.ratios if r < 1.0]
            runs = [(pruner, ratio) for ratio in args.ratios] + [(p, min(pruned)) for p in extra if pruned]
            for use, ratio in runs:
                try:
                    row = measure(model, sample, use, ratio, args.repeats, name)
                except PrunerNotApplicable as exc:
                    notes.append({"model": label, "input": name, "pruner": use.name, "not_applicable": str(exc)})
                    continue
                row.model = label
                rows.append(row)
                print(f"[{label}] {name} {row.pruner} ratio {ratio:.2f}: tokens {row.tokens_kept}/{row.tokens_total}, total {row.ms['total']:.1f} ms", flush=True)
        finally:
            if name == "video":
                set_video_mode(model, False, saved, args.tiny)
    if env.get("flash_attn") and not args.quick and args.device.startswith("cuda"):
        def answer():
            return model.decode(image, model.encode(image, StageTimer()), PrunePlan(), StageTimer()).extras["generated_ids"]

        sdpa_ids = answer()
        model.net.vlm.set_attn_implementation("flash_attention_2")
        model.config.attn = "flash_attention_2"
        fa2_ids = answer()
        notes.append({"model": label, "check": "flash_attention_2 vs sdpa ids (image, ratio 1.0)", "ids_equal": fa2_ids == sdpa_ids})
        for ratio in args.ratios:
            row = measure(model, image, pruner, ratio, args.repeats, "image")
            row.model = label
            rows.append(row)
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
    budget = args.budget or (240.0 if args.quick else 420.0)
    models = args.models or (MODELS_TINY if args.tiny else MODELS_QUICK if args.quick else MODELS_FULL)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        from transformers import InternVLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration, Sam2VideoModel  # noqa: F401
    except ImportError as exc:
        fail(f"cannot import what the check needs ({exc}); it needs torch and transformers with Qwen2.5-VL, InternVL and SAM2 video classes")
    env = environment(args.device)
    print(f"gpu_check: {env}", flush=True)
    from evtp_cli.pruners import get_pruner

    pruner = get_pruner(args.pruner)
    extra = [get_pruner(name) for name in args.extra_pruners if name != args.pruner]
    image, video = inputs(args.tiny)
    rows: list[Row] = []
    notes: list[dict] = []
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
    for note in notes:
        print(f"note: {note}")
    out = Path(args.output) if args.output else Path("runs") / f"gpu-check-{dt.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    record = {"env": env, "args": vars(args), "rows": [dataclasses.asdict(r) for r in rows], "notes": notes,
              "seconds": round(time.perf_counter() - start, 1)}
    (out / "gpu_check.json").write_text(json.dumps(record, indent=2))
    print(f"gpu_check: {len(rows)} rows in {record['seconds']} s; written to {out / 'gpu_check.json'}")
    bad_eq = [n for n in notes if n.get("ids_equal") is False or n.get("mask_agreement", 1.0) < 0.999]
    if failed or bad_eq:
        print(f"gpu_check: FAILED ({len(failed)} model(s) failed, {len(bad_eq)} equivalence check(s) off)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
