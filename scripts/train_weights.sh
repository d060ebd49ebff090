#!/usr/bin/env bash
# The recipe of the shipped weights: SRResNet x4 (pixel MSE), then SRGAN-MSE x4 started from it
# (pixel MSE + 1e-3 adversarial, no VGG), sized to a wall-clock budget on one GPU.
#
#   TRAIN=data/train VALID=data/valid BUDGET_S=420 bash scripts/train_weights.sh
#
# A 300-iteration calibration run measures images/s with the real settings; the SRResNet run then
# gets about GEN_SHARE of the remaining budget, the SRGAN-MSE run the rest. Without a GPU, set
# CUDA= (empty) to train on the CPU (bf16 on CPUs with AMX/AVX512-BF16).
# Other scales: SCALE=2 or 8 (CROP: HR crop size, 96 by default; x8 measured better at 192), and
# PRETRAIN=FILE to start SRResNet from a generator of that scale (scripts/transfer_scale.py
# makes one from the x4 weights).
set -euo pipefail
TRAIN=${TRAIN:-data/train}
VALID=${VALID:-data/valid}
OUT=${OUT_DIR:-runs/shipped}
BUDGET_S=${BUDGET_S:-420}          # seconds for both trainings together, after calibration
GEN_SHARE=${GEN_SHARE:-0.78}        # fraction of the budget for SRResNet
BATCH=${BATCH:-64}
LR=${LR:-2e-4}
WORKERS=${WORKERS:-12}
ITERS=${ITERS:-1000}                # iterations per epoch
CUDA=${CUDA---cuda}
PY=${PYTHON:-python}
common=(--trainset_dir "$TRAIN" --validset_dir "$VALID" --upscale_factor ${SCALE:-4}
        --crop_size ${CROP:-96}
        --workers "$WORKERS" --cache --num_blocks ${BLOCKS:-16} --log_every 50 $CUDA)

# 1. calibration: images/s of each mode with the real settings (also a fail-fast smoke test)
rate() {  # rate MODE EXTRA... -> images/s of a 300-iteration epoch
  local dir="$OUT/calibrate_$1"; rm -rf "$dir"
  $PY train.py --mode "$1" "${common[@]}" --batch_size "$BATCH" --lr "$LR" --epochs 1 \
      --iters_per_epoch ${CAL_ITERS:-300} --out_dir "$dir" "${@:2}" >/dev/null
  tail -n 1 "$dir/history.csv" | awk -F, '{print $NF}'
}
g_ips=$(rate generator)
a_ips=$(rate adversarial --content_weight 0 --batch_size 16)
echo "calibration: generator ${g_ips} images/s (batch $BATCH), adversarial ${a_ips} images/s (batch 16)"

# 2. SRResNet: epochs of $ITERS iterations at batch $BATCH, lr / 10 for the last fifth
g_epochs=$(awk -v ips="$g_ips" -v b="$BUDGET_S" -v s="$GEN_SHARE" -v n="$ITERS" -v bs="$BATCH" \
  'BEGIN{e=int(ips*b*s/(n*bs)); print (e<2?2:e)}')
g_step=$(( g_epochs * 4 / 5 ))
echo "SRResNet: $g_epochs epochs x $ITERS iterations x batch $BATCH, lr $LR, /10 after epoch $g_step"
$PY train.py --mode generator "${common[@]}" --batch_size "$BATCH" --lr "$LR" --ema 0.999 \
    --epochs "$g_epochs" --iters_per_epoch "$ITERS" --lr_step "$g_step" --out_dir "$OUT/srresnet" \
    ${PRETRAIN:+--pretrain "$PRETRAIN"}

# 3. SRGAN-MSE from the SRResNet weights: the paper's batch 16 and lr 1e-4, /10 at half
a_epochs=$(awk -v ips="$a_ips" -v b="$BUDGET_S" -v s="$GEN_SHARE" -v n="$ITERS" \
  'BEGIN{e=int(ips*b*(1-s)/(n*16)); print (e<2?2:e)}')
echo "SRGAN-MSE: $a_epochs epochs x $ITERS iterations x batch 16"
$PY train.py --mode adversarial --content_weight 0 --adversarial_weight 1e-3 "${common[@]}" \
    --batch_size 16 --lr 1e-4 --epochs "$a_epochs" --iters_per_epoch "$ITERS" \
    --pretrain "$OUT/srresnet/weights/G_epoch_${g_epochs}.pth" --out_dir "$OUT/srgan_mse"
