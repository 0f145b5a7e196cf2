#!/usr/bin/env bash
# Recipe study for the demo PLM (docs/demo_plm_recipes.md): does a different learning rate, batch,
# longer training or a larger ESM-2 shape move held-out perplexity? Seven runs of
# scripts/train_demo_plm.py side by side on one GPU (it runs on CPU too, about 7 hours in a row). It ran
# (2026-11-26) on the previous 872-protein data; train_demo_plm.py now reads the corpus under DATA.
#   bash scripts/study_demo_plm_recipes.sh [DATA_DIR] [LONG_MINUTES] [DEVICE]
set -u
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}; L=${2:-6}; DEV=${3:-cuda}
W=${STUDY_DIR:-runs/plm_recipes}; mkdir -p "$W"
T="python3 scripts/train_demo_plm.py --data $DATA --device $DEV --threads 2"
# The long runs get as many steps as fit in LONG_MINUTES: time 1,000 steps of each shape first,
# all three at once so the timing sees the same contention as the study.
$T --steps 1001 --batch 64 --out $W/cal_a --work $W/cal_a/w > $W/cal_a.log 2>&1 &
$T --steps 1001 --batch 64 --layers 6 --dim 320 --heads 20 --out $W/cal_b --work $W/cal_b/w > $W/cal_b.log 2>&1 &
$T --steps 1001 --batch 16 --out $W/cal_c --work $W/cal_c/w > $W/cal_c.log 2>&1 &
wait
steps_for() { python3 - "$1" "$L" <<'P'
import re, sys
m = [float(x) for x in re.findall(r"step (?:50|1000) loss .* elapsed ([\d.]+) min", open(sys.argv[1]).read())]
seconds_per_step = (m[-1] - m[0]) / 950 * 60
print(int(float(sys.argv[2]) * 60 / seconds_per_step * 0.75))  # 0.75: seven runs share the device
P
}
SA=$(steps_for $W/cal_a.log); SB=$(steps_for $W/cal_b.log); SC=$(steps_for $W/cal_c.log)
echo "long runs: 4x256 batch 64: $SA steps; 6x320 batch 64: $SB; 4x256 batch 16: $SC"
run() { n=$1; shift; $T --out $W/$n --work $W/$n/w --name esm2_$n "$@" > $W/$n.log 2>&1; }
run v0_base --steps 3000 --batch 16 &
run v1_lr1e3 --steps 3000 --batch 16 --lr 1e-3 &
run v2_lr5e4 --steps 3000 --batch 16 --lr 5e-4 &
run v3_b32 --steps 1500 --batch 32 &
run v4_long --steps "$SA" --batch 64 --warmup 500 --eval-every 2000 --max-minutes $((L + 1)) &
run v5_t6_320 --steps "$SB" --batch 64 --layers 6 --dim 320 --heads 20 --warmup 500 --eval-every 2000 --max-minutes $((L + 1)) &
run v6_long_b16 --steps "$SC" --batch 16 --warmup 500 --eval-every 4000 --max-minutes $((L + 1)) &
wait
for n in v0_base v1_lr1e3 v2_lr5e4 v3_b32 v4_long v5_t6_320 v6_long_b16; do
    echo "== $n"; grep -E "perplexity|stopping" $W/$n.log
done
