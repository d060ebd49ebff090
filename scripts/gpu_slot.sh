#!/usr/bin/env bash
# One GPU slot, spent in one command (docs/gpu-slot.md). On the GPU machine, with slot_data/
# carried (python scripts/pack_slot_data.py makes it):
#
#   bash scripts/gpu_slot.sh                               # writes into $OUT, within SLOT_BUDGET s
#   CPU_REHEARSAL=1 OUT=/tmp/x bash scripts/gpu_slot.sh    # the same on the CPU, tiny, about 2 min
#
# bench_train.py first, then the trainings as concurrent processes with pytest -m cuda beside
# them, then evaluate.py on Set5 and Set14 for every produced generator and the shipped files:
# $OUT gets results.json, bench_train.txt, slot.log and the best weights files (8 files in all).
# weights/ is only read. The logic is in scripts/gpu_slot_tools.py.
#
#   OUT           the folder that comes back (required)
#   SLOT_BUDGET   seconds of wall clock for everything (default 510: inside a 600-s command)
#   SLOT_DATA     the packed data (default slot_data)
#   SLOT_WORK     scratch for runs and logs (default runs/gpu_slot; not brought back)
#   CPU_REHEARSAL 1: CPU, 2-block networks, 32-px crops, a few iterations; checks $OUT after
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that comes back}"
PY=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONUNBUFFERED=1
args=(--out "$OUT" --budget "${SLOT_BUDGET:-510}" --data "${SLOT_DATA:-slot_data}"
      --work "${SLOT_WORK:-runs/gpu_slot}")
if [ "${CPU_REHEARSAL:-0}" = 1 ]; then
    # the rehearsal's x4 SRResNet fast path is made to fail, so that the eager fallback runs too
    args+=(--rehearsal --budget "${SLOT_BUDGET:-120}" --break_fast x4_srresnet)
fi
"$PY" scripts/gpu_slot_tools.py "${args[@]}"
if [ "${CPU_REHEARSAL:-0}" = 1 ]; then
    "$PY" scripts/gpu_slot_tools.py check "$OUT"
fi
