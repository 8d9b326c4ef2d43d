#!/usr/bin/env bash
# One-GPU check of issue 7 in one run (at most GPU_CHECK_TIMEOUT = 420 s of work, under 8 minutes in all):
#
#   (a) selection: the CUDA equality tests (tests/test_select_fast.py and tests/test_static_decode.py, -k cuda),
#       then benchmarks/bench_select.py --device cuda --repeats 20 (the selection table, docs/performance.md);
#   (b)-(d) the Sa2VA backends at real size with random weights (benchmarks/sa2va_gpu_check.py): hook vs
#       generate; a 1008 px image and a 16-frame 448 px video (4096 visual tokens) at ratios 1.0 and 0.2 (EVTP)
#       with prefill and end-to-end speed-ups; the same with decode=static (static KV cache + CUDA-graph steps)
#       and a 16-token answer both ways; evtp:at=vision-layer-L (7, 15, 23) next to pre-LLM EVTP at 0.2;
#       VisionZip and FastV at 0.2. Qwen2.5-VL-7B shape first, then InternVL 4B and InternVL3-8B shapes while
#       the time budget lasts.
#
#   benchmarks/gpu_check.sh              # all of the above (expected 6-7 minutes on an H100; not yet timed)
#   benchmarks/gpu_check.sh --quick      # selection with 5 repeats; Qwen2.5-VL-7B shape only, one timed run, one vision layer
#   benchmarks/gpu_check.sh --no-select  # skip (a)
#
# Prints the tables and writes gpu_check.json into $OUT when set, else runs/gpu-check-<time>/.
# Nothing is downloaded or installed: torch and transformers must be importable; the repository runs from
# source (PYTHONPATH=.). Exit codes: 0 ok, 1 a test, a model or an equivalence check failed, 2 no GPU / missing
# packages; the Sa2VA part stops at the time limit and prints what finished.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PY="${PYTHON:-$(command -v python3 || command -v python || echo python3)}"
TOTAL="${GPU_CHECK_TIMEOUT:-420}"
START=$SECONDS

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

QUICK=0
SELECT=1
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --no-select) SELECT=0 ;;
    --quick) QUICK=1; ARGS+=("$arg") ;;
    *) ARGS+=("$arg") ;;
  esac
done
OUTDIR="${OUT:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUTDIR"
ARGS+=(--output "$OUTDIR")
STATUS=0

if [[ $SELECT == 1 ]]; then
  echo "== (a) selection: CUDA equality tests =="
  if "$PY" -c "import pytest" 2>/dev/null; then
    timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_select_fast.py tests/test_static_decode.py -k cuda || STATUS=1
  else
    echo "gpu_check: pytest is not installed; the Sa2VA part still checks fast == reference selection and static == dynamic ids"
  fi
  echo "== (a) selection table: benchmarks/bench_select.py --device cuda =="
  REPEATS=20; [[ $QUICK == 1 ]] && REPEATS=5
  timeout 180 "$PY" benchmarks/bench_select.py --device cuda --repeats "$REPEATS" || STATUS=1
fi

LEFT=$(( TOTAL - (SECONDS - START) ))
if (( LEFT < 90 )); then
  echo "gpu_check: ${LEFT} s left of ${TOTAL}: the Sa2VA part does not fit; raise GPU_CHECK_TIMEOUT" >&2
  exit 1
fi
# models not started within BUDGET seconds are skipped (a 7B-shape model takes about 2 minutes)
BUDGET=$(( LEFT > 270 ? LEFT - 150 : LEFT / 3 ))
echo "== (b)-(d) Sa2VA backends: ${LEFT} s left, new models started within ${BUDGET} s =="
timeout --signal=INT --kill-after=20 "$LEFT" "$PY" -m benchmarks.sa2va_gpu_check --budget "$BUDGET" "${ARGS[@]}" || STATUS=1
exit $STATUS
