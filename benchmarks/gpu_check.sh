#!/usr/bin/env bash
# One-GPU check of the Sa2VA backends (sa2va-qwen, sa2va-internvl) at real size with random weights.
#
#   benchmarks/gpu_check.sh            # Qwen2.5-VL-7B, InternVL-4B and InternVL3-8B shapes, 3 timed runs (< 8 min)
#   benchmarks/gpu_check.sh --quick    # Qwen2.5-VL-7B shape only, 1 timed run (about 2-3 min)
#
# Per model: ratio 1.0 through the pruning hook vs transformers' generate (same ids and masks), then a
# 1008 px synthetic image and a 16-frame 448 px synthetic video (4096 visual tokens) at ratios 1.0 and
# 0.2 (EVTP), timed per stage with CUDA events after a warm-up; prints the stage table and writes
# gpu_check.json into $OUT (when set) or runs/gpu-check-<time>/. Nothing is downloaded or installed:
# torch and transformers must be importable; the repository runs from source (PYTHONPATH=.).
# Exit codes: 0 ok, 1 a model or an equivalence check failed, 2 no GPU / missing packages, 124 time limit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python}"
LIMIT="${GPU_CHECK_TIMEOUT:-470}"

# fail fast, before anything heavy is imported or built
"$PY" - <<'PYEOF' || exit 2
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "safetensors", "tokenizers", "PIL", "typer", "rich") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing Python packages: {', '.join(missing)} (nothing is installed by this script)")
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device (torch.cuda.is_available() is False); run this on the GPU machine")
import transformers
try:
    from transformers import InternVLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration, Sam2VideoModel  # noqa: F401
except ImportError as exc:
    sys.exit(f"gpu_check: transformers {transformers.__version__} lacks a class the check needs ({exc}); it needs >= 4.56")
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
PYEOF

ARGS=("$@")
if [[ -n "${OUT:-}" ]]; then ARGS+=(--output "$OUT"); fi
exec timeout --signal=INT --kill-after=30 "$LIMIT" "$PY" -m benchmarks.sa2va_gpu_check "${ARGS[@]}"
