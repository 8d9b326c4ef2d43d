#!/usr/bin/env bash
# EVTP ablation on the synthetic VALIDATION split (defaults are chosen here, never on test):
# spatial weight λ, information weight β, temporal scale τ and video mode, beside the baselines.
#   benchmarks/ablate_evtp.sh [OUTPUT]      (about 20 minutes on 2 CPU cores; RESUME=--resume continues a killed run;
#                                            MODEL="tiny-ivs:weights=W" ablates other weights)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == -* ]]; then  # --help or a mistyped flag: not an output folder
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
OUT="${1:-runs/ablation-val}"
EVTP="${EVTP:-.venv/bin/evtp}"
P=""
for lam in 0 0.25 0.5 0.75 1; do P+="evtp:spatial_weight=$lam,mode=per-frame,"; done
for beta in 0.5 1; do P+="evtp:spatial_weight=0.5,info_weight=$beta,mode=per-frame,"; done
for tau in 0.5 1 2; do P+="evtp:spatial_weight=0.5,temporal_scale=$tau,mode=global,"; done
P+="kcenter,divprune,random,uniform"
"$EVTP" sweep-ratios --models "${MODEL:-tiny-ivs}" \
  --datasets "synthetic-image:split=val,n=300,synthetic-video:split=val,n=100" \
  --pruners "$P" --ratios 0.1,0.2 --output "$OUT" ${RESUME:---overwrite}
