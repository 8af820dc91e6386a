#!/usr/bin/env bash
# The checks that need a GPU, in one run: the CUDA tests, the self-check of the toy model and of
# every family's tiny checkpoint on CUDA, and the benchmarks on the GPU (bfloat16). Everything goes
# to one log, ${OUT:-gpu-results}/gpu.log. Run from the repository root, with gremlinkit importable.
set -u
out=${OUT:-gpu-results}
mkdir -p "$out"
log="$out/gpu.log"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run COMMAND under a time limit, its output in the log
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "== $name" | tee -a "$log"
    timeout "$limit" "$@" >>"$log" 2>&1
    echo "== $name: exit $?, $((SECONDS - t0)) s" | tee -a "$log"
}

step versions 60 $py -c "import torch, transformers, nnsight, sae_lens; print(torch.__version__, \
transformers.__version__, nnsight.__version__, sae_lens.__version__, torch.cuda.get_device_name())"
step cuda-tests 90 $py -m pytest -m cuda tests/test_devices.py -q -p no:cacheprovider
step bench-census-units 150 $py benchmarks/bench_census.py --part units
step support-cuda 120 $py -c "import tempfile; from gremlinkit import check; \
print(check.support_markdown(check.support(tempfile.mkdtemp(), device='cuda')))"
step check-toy-bf16 60 $py -m gremlinkit check toy-base --device cuda --dtype bfloat16
step bench-interventions 60 $py benchmarks/bench_interventions.py
step bench-read 60 $py benchmarks/bench_read.py
step bench-scan 120 $py benchmarks/bench_scan.py
grep -E "^== .*exit" "$log"
