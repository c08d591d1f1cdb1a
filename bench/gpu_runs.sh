#!/bin/bash
# The GPU benchmarks of issue 7 (and the H100 figures of issues 2 and 3), for a session that is
# lent an H100: 30 min of device time, at most 10 min per command, 64 MiB carried per call (two
# CIFAR-10 shards), and a machine idle for 30 s is given back with everything stashed on it. So
# the calls run back to back, each carrying two shards to /tmp/data (git-ignored .carry/ here).
# One 30-minute session holds about 24 minutes of training, so it runs ONE method's long run:
#   1. carry .carry/b = train-0{0,1}:  bash bench/gpu_runs.sh            # (only stashes the shards)
#   2. carry .carry/b = train-0{2,3}:  bash bench/gpu_runs.sh
#   3. carry .carry/b = train-04+test: bash bench/gpu_runs.sh fit mmdc 1400 470
#   4., 5. carry nothing:              bash bench/gpu_runs.sh fit mmdc 1400 470   # continues
# `fit METHOD SECONDS [SLICE]` sizes the method's full schedule (its reference shape, fewer epochs)
# to about SECONDS of training, so the run finishes, refinement and learning-rate steps included;
# each call trains at most SLICE seconds and the same call again continues from the checkpoint.
# Epoch times come from a `probe` run if there is one, else from round 4's H100 runs. MMDC trains
# on the 60,000-image union, IMC-SwAV on the train split and is scored on the test split too
# (--holdout), as the papers report them.
# `probe` (graphs check, step throughput with its host-sync count, 3-epoch probes on 20k images)
# and `compile` (torch.compile on the step) measure speed; `mnist` (carry MNIST) is issue 2's
# reference recipe. Results come back as $OUT/results.tgz.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
mkdir -p /tmp/data/cifar-10 /tmp/data/mnist /tmp/res /tmp/ckpt
cp .carry/*/mnist/* /tmp/data/mnist/ 2>/dev/null; cp .carry/*/*.npz /tmp/data/cifar-10/ 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader
ls /tmp/data/cifar-10 | tr '\n' ' '; echo
run() { timeout "$1" python3 -m bench.run "${@:2}" 2>&1 | grep -v "^INFO" | tail -30; }
case "${1:-stash}" in
  probe)  # CUDA graphs against eager steps, the step throughput, then 3 epochs of each method on
    # 20,000 images (their seconds per epoch size the `fit` runs; eager if the graphed run fails)
    timeout 150 python3 -m bench.graph_check --out /tmp/res/graph-check.json 2>&1 | tail -3
    timeout 60 python3 -m bench.throughput --channels 3 --size 32 --batch-size 128 --images 10240 \
      --out /tmp/res/tp-r18-b128-graphs-h100.json
    for method in mmdc imc; do
      run 100 --dataset cifar10 --split train --limit 20000 --data /tmp/data --method $method --epochs 3 \
        --eval-every 1 --verbose --out /tmp/res/probe-$method.json
      [ -s /tmp/res/probe-$method.json ] || { touch /tmp/res/eager-$method; CORRAL_CUDA_GRAPHS=0 run 100 \
        --dataset cifar10 --split train --limit 20000 --data /tmp/data --method $method --epochs 3 --verbose \
        --out /tmp/res/probe-$method.json; }
    done ;;
  compile)
    CORRAL_TORCH_COMPILE=default timeout 150 python3 -m bench.throughput --channels 3 --size 32 \
      --batch-size 128 --images 10240 --out /tmp/res/tp-r18-b128-compile-h100.json ;;
  fit)  # fit METHOD SECONDS [SLICE]
    method=$2 seconds=$3 slice=${4:-$3}
    [ -e /tmp/res/eager-$method ] && export CORRAL_CUDA_GRAPHS=0 && echo "eager steps (the graphed probe failed)"
    if [ "$method" = mmdc ]; then split=(--split all) n=60000; else split=(--split train --holdout test) n=50000; fi
    epochs=$(python3 -c "import json, os; probe = '/tmp/res/probe-$method.json'
s = json.load(open(probe))['seconds_per_epoch'] if os.path.exists(probe) else {'mmdc': 1.86, 'imc': 2.07}['$method']
print(max(2, int($seconds / (s * $n / 20000 * 1.15))))")  # seconds per 20k-image epoch; evaluations take the rest
    echo "$method: $epochs epochs for about $seconds s, at most $slice s in this call"
    run $((slice + 100)) --dataset cifar10 "${split[@]}" --data /tmp/data --method "$method" --epochs "$epochs" \
      --eval-every $(( (epochs + 9) / 10 )) --verbose --budget-seconds "$slice" \
      --checkpoint /tmp/ckpt/cifar-$method.pt --out /tmp/res/cifar-$method-fit-h100.json ;;
  mnist)  # issue 2: the reference recipe, >= 0.99 in under 3 minutes; IMC-SwAV on MNIST
    run 300 --dataset mnist --data /tmp/data --method mmdc --epochs 50 --eval-every 5 --verbose \
      --budget-seconds 240 --checkpoint /tmp/ckpt/mnist-mmdc.pt --out /tmp/res/mnist-mmdc-h100.json
    run 150 --dataset mnist --data /tmp/data --method imc --epochs 30 --eval-every 2 --verbose \
      --budget-seconds 110 --checkpoint /tmp/ckpt/mnist-imc.pt --out /tmp/res/mnist-imc-h100.json ;;
esac
tar czf "${OUT:-/tmp}/results.tgz" -C /tmp/res .
