#!/usr/bin/env bash
# Issue 15's benchmarks on an accelerator, bf16, into benchmarks/gpu/: the operator (bench_op.py), the text
# models (bench_model.py; with BENCH_GPU_COMPILE=1 also compiled), where their steps spend the GPU's time
# (profile_model.py: predictor, pooling forward and backward, mix, everything else) and the vision models
# (bench_vision.py, with the 2-D crossover). Where triton is installed, implementation="triton" is timed
# too: against the fast path in bench_op.json (triton_over_fast_*), the causal LM with it against Llama in
# bench_model_triton.json, and the vision models with it in bench_vision_triton.json.
# Sizes are a GPU's (hidden 1024, 8 layers, n up to 8192; the CPU rows use hidden 256, 4 layers), so every
# ratio is ContextPool against the transformers model of the same size, measured in the same run.
#
#   bash scripts/bench_gpu.sh                 # on a CUDA machine, from the repository root (an estimated 5 minutes
#                                             # on an H100: never run there yet)
#   PYTHON=.venv/bin/python bash scripts/bench_gpu.sh
#   bash scripts/bench_gpu.sh --smoke         # tiny sizes on this machine's --device (cpu by default): checks the script
#
# Environment: PYTHON (default python3), BENCH_GPU_DEVICE (default cuda; cpu with --smoke), BENCH_GPU_DTYPE
# (default bfloat16), BENCH_GPU_OUT (default benchmarks/gpu), BENCH_GPU_COMPILE=1 (add the torch.compile rows:
# inductor compiles every model first, minutes more). The names are prefixed so that a machine's own OUT,
# DEVICE or DTYPE never redirects the results. The package is read from src/ (PYTHONPATH), so a machine with
# torch and transformers needs nothing installed.
set -euo pipefail

smoke=0
if [[ "${1:-}" == "--smoke" ]]; then
    smoke=1
elif [[ $# -gt 0 ]]; then
    echo "bench_gpu.sh: unknown argument '$1' (allowed: --smoke)" >&2
    exit 2
fi

PYTHON=${PYTHON:-python3}
DTYPE=${BENCH_GPU_DTYPE:-bfloat16}
OUT=${BENCH_GPU_OUT:-benchmarks/gpu}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if [[ $smoke == 1 ]]; then
    DEVICE=${BENCH_GPU_DEVICE:-cpu}
    op=(--sizes 256 --widths 64 --repeats 1)
    model=(--quick --repeats 1 --only masked-lm)
    profile=(--quick --repeats 1)
    compiled=()
    vision=(--quick --repeats 1 --models vit)
else
    DEVICE=${BENCH_GPU_DEVICE:-cuda}
    op=(--sizes 1024 4096 16384 --widths 256 1024 --batch 8 --repeats 10 --mem-cap-gib 16)
    sizes=(--hidden 1024 --layers 8 --heads 16 --vocab 32000 --causal-sizes 2048x8,8192x2 --mlm-sizes 512x32
           --seq2seq-len 128 --seq2seq-batch 64)
    model=("${sizes[@]}" --repeats 10 --warmup 3)
    profile=("${sizes[@]}" --repeats 5)
    compiled=()
    if [[ "${BENCH_GPU_COMPILE:-0}" == 1 ]]; then
        compiled=("${model[@]}" --only causal-lm generate --compile)
    fi
    vision=(--batch 256 --repeats 10 --crossover)
fi
placed=(--device "$DEVICE" --dtype "$DTYPE")
# implementation="triton" beside the fast path where the triton package is there (not in --smoke: the CPU
# would run the kernels in Triton's interpreter, far too slowly for a benchmark)
triton=0
if [[ $smoke == 0 ]] && "$PYTHON" -c "import triton" 2>/dev/null; then
    triton=1
    op+=(--triton)
fi

"$PYTHON" -c "import torch; print('torch', torch.__version__, 'accelerator', torch.accelerator.current_accelerator())"
"$PYTHON" scripts/bench_op.py "${op[@]}" "${placed[@]}" --out "$OUT/bench_op"
"$PYTHON" scripts/bench_model.py "${model[@]}" "${placed[@]}" --output-dir "$OUT"
if [[ $triton == 1 ]]; then  # the causal LM with the Triton kernels against Llama, its own results file
    "$PYTHON" scripts/bench_model.py "${model[@]}" --only causal-lm --pool-implementation triton "${placed[@]}" \
        --output-dir "$OUT" --name bench_model_triton
fi
"$PYTHON" scripts/profile_model.py "${profile[@]}" "${placed[@]}" --output "$OUT/profile_model.json"
if [[ ${#compiled[@]} -gt 0 ]]; then
    "$PYTHON" scripts/bench_model.py "${compiled[@]}" "${placed[@]}" --output-dir "$OUT"
fi
"$PYTHON" scripts/bench_vision.py "${vision[@]}" "${placed[@]}" --output-dir "$OUT"
if [[ $triton == 1 ]]; then  # both vision models with the Triton kernels, their own results file
    "$PYTHON" scripts/bench_vision.py --batch 256 --repeats 10 --pool-implementation triton "${placed[@]}" \
        --output-dir "$OUT" --name bench_vision_triton
fi
