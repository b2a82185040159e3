#!/usr/bin/env bash
# GPU check, run on a machine with CUDA from the repository root (e.g. through the device tool):
#   bash simulations/gpu_check.sh
# Training throughput of the classifiers on CUDA, ours vs a bare PyTorch loop, bf16 autocast vs float32, at the
# paper preset's 224 px and the simulation's 64 px. Packages missing there may be carried as wheels in .whl/.
set -euo pipefail
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
python3 -c "from shared.training.device import select_device; print('device auto ->', select_device('auto'))"
bench() { echo; echo "== bench_train $*"; python3 -m simulations.bench_train "$@"; }
bench --arch resnet101 --size 224 --n 1024 --batch 32 --repeats 3
bench --arch resnet101 --size 224 --n 1024 --batch 32 --repeats 3 --no-amp
bench --arch resnet101 --size 64 --n 4096 --batch 64 --repeats 3
bench --arch resnet18 --size 224 --n 2048 --batch 64 --repeats 3
