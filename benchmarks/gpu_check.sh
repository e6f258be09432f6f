#!/usr/bin/env bash
# The TensorRT path end to end, one table (issue #15): exports ViT-B/16-shaped fp32/fp16/int8 bundles for `cuda`
# and `jetson-orin-jp6`, builds fp16 and int8 engines, compares each engine with ONNX Runtime CPU (cosine, patch
# agreement), times the encoder (p50/p99) and runs `vlmedge run --headless --max-frames 300` with each engine.
#
#   on a machine with an NVIDIA GPU:  pip install tensorrt && pip install ".[export]"  then
#   benchmarks/gpu_check.sh [--json results.json]          (about 10 minutes on a 16-core host)
#   benchmarks/gpu_check.sh --dry-run [--tiny]             (no GPU: the exports and the ORT CPU column only)
#
# GPU_CHECK_TIMEOUT (seconds, default 600) caps the whole run; PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout "${GPU_CHECK_TIMEOUT:-600}" "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
