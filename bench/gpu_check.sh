#!/usr/bin/env bash
# GPU check for issue 4, a few minutes on one NVIDIA GPU: the gpu-marked tests, then frames
# per second of the default model on the GPU (bf16 autocast, channels_last) and, for
# comparison in the same run, on this machine's CPU. Run from anywhere:
#
#   bench/gpu_check.sh            # uses .venv/bin/python, or $PYTHON
#
# The project pins a CPU build of torch (pyproject.toml); on a GPU machine install the CUDA
# build of the same version first, e.g.
#   .venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'PY'
import sys, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch: install a CUDA build of torch (see above)")
print(f"device: {torch.cuda.get_device_name(0)}")
PY

echo "== gpu tests"
"$PY" -m pytest -q -m gpu -p no:cacheprovider tests/cv/model/test_gpu.py tests/cv/model/test_network.py

echo "== GPU throughput"
"$PY" bench/inference.py --device cuda --batches 1 16 64 256 --frames 512 --no-pipeline

echo "== CPU throughput, same machine"
"$PY" bench/inference.py --device cpu --batches 1 16 64 --frames 128 --repeats 2 --no-pipeline
