#!/bin/bash
# The GPU benchmarks of issues 2, 3 and 7, for a session that is lent an H100 (30 min of device
# time, at most 10 min per command, 64 MiB carried per call). Prepare here (data is git-ignored
# under .carry/, which `carry` sends):
#   mkdir -p .carry/a/mnist .carry/a/cifar-10 .carry/b
#   cp ../shared/datasets/mnist/* .carry/a/mnist/; cp ../shared/datasets/cifar-10/test.npz .carry/a/cifar-10/
#   cp ../shared/datasets/cifar-10/train-0{0,1}.npz .carry/b/      # the next call: train-0{2,3}, then 04
# then call `run` with carry [".carry/a"] and `bash bench/gpu_runs.sh mnist`, and with
# [".carry/b"] and `bash bench/gpu_runs.sh cifar` (back to back: a machine idle 30 s is given
# back, and with it the shards stashed in /tmp/data and the checkpoints in /tmp/ckpt, which let
# the next call continue a run). Results come back as $OUT/results.tgz.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
mkdir -p /tmp/data/cifar-10 /tmp/data/mnist /tmp/res /tmp/ckpt
cp .carry/*/mnist/* /tmp/data/mnist/ 2>/dev/null; cp .carry/*/cifar-10/*.npz .carry/*/*.npz /tmp/data/cifar-10/ 2>/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
ls /tmp/data/cifar-10 | tr '\n' ' '; echo
run() { timeout "$1" python3 -m bench.run "${@:2}" 2>&1 | grep -v "^INFO" | tail -40; }
case "${1:-mnist}" in
  mnist)  # issue 2: the reference recipe, >= 0.99 in under 3 minutes; step throughput; IMC MNIST
    run 300 --dataset mnist --data /tmp/data --method mmdc --epochs 50 --eval-every 5 --verbose \
      --budget-seconds 240 --checkpoint /tmp/ckpt/mnist-mmdc.pt --out /tmp/res/mnist-mmdc-h100.json
    timeout 90 python3 -m bench.throughput --channels 1 --size 32 --batch-size 128 --images 25600 --out /tmp/res/tp-vgg-h100.json
    timeout 120 python3 -m bench.throughput --channels 3 --size 32 --batch-size 128 --images 10240 --out /tmp/res/tp-r18-h100.json
    run 150 --dataset mnist --data /tmp/data --method imc --epochs 30 --eval-every 2 --verbose \
      --budget-seconds 110 --checkpoint /tmp/ckpt/mnist-imc.pt --out /tmp/res/mnist-imc-h100.json ;;
  compile)  # issue 7: does torch.compile pay on the GPU?
    CORRAL_TORCH_COMPILE=default timeout 200 python3 -m bench.throughput --channels 3 --size 32 --batch-size 128 \
      --images 10240 --out /tmp/res/tp-r18-compile-h100.json ;;
  cifar)  # issue 7: MMDC on the union, IMC on the train split; each call continues from /tmp/ckpt
    shards=$(ls /tmp/data/cifar-10 | wc -l)  # a checkpoint belongs to one image count
    run 280 --dataset cifar10 --data /tmp/data --method mmdc --epochs 400 --eval-every 5 --verbose \
      --budget-seconds 240 --checkpoint /tmp/ckpt/cifar-mmdc-$shards.pt --out /tmp/res/cifar-mmdc-h100.json
    run 280 --dataset cifar10 --split train --data /tmp/data --method imc --epochs 500 --eval-every 5 --verbose \
      --budget-seconds 240 --checkpoint /tmp/ckpt/cifar-imc-$shards.pt --out /tmp/res/cifar-imc-h100.json ;;
esac
tar czf "${OUT:-/tmp}/results.tgz" -C /tmp/res .
