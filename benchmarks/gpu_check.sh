#!/usr/bin/env bash
# The prepared GPU run: the Triton kernel tests compiled for CUDA, then every benchmark's GPU table.
#
#   bash benchmarks/gpu_check.sh tests [OUT_DIR]    # kernel tests on the GPU (about 5 minutes)
#   bash benchmarks/gpu_check.sh bench [OUT_DIR]    # the benchmarks' CUDA tables (about 8 minutes)
#   bash benchmarks/gpu_check.sh list               # what each part runs, without running it
#
# Two parts, so that each fits one 10-minute device command. Written for a machine whose python3 already
# holds torch, triton, lightning and timm (the project runs from the checkout: PYTHONPATH=.); set PYTHON to
# use another interpreter. Each step has its own time limit, so a slow step costs its limit and no more;
# everything printed goes to OUT_DIR (default: $OUT on the device machine, else benchmarks/out/gpu), one
# file per part. Record the figures in benchmarks/RESULTS.md with the date and the GPU.
set -uo pipefail
part=${1:-list}
out=${2:-${OUT:-benchmarks/out/gpu}}
py=${PYTHON:-python3}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1

# one step per line: <seconds> <command>
TESTS=(
  "420 -m pytest -q -p no:cacheprovider tests/kernels/test_channel_gate.py tests/kernels/test_channel_excite.py tests/kernels/test_squeeze_excite.py tests/kernels/test_han_csam.py tests/kernels/test_int_gemm.py tests/kernels/test_quant_act.py tests/kernels/test_moc.py tests/kernels/test_moc_int.py tests/kernels/test_kv_quant.py tests/kernels/test_adaln.py tests/kernels/test_patch_embed.py tests/kernels/test_compile.py"
  "90 -m pytest -q -p no:cacheprovider tests/test_var.py -k flex"
)
BENCH=(
  "100 benchmarks/channel_gate.py --peak-gbs 4800"
  "60 benchmarks/channel_gate.py --peak-gbs 4800 --backward"
  "120 benchmarks/int_gemm.py"
  "90 benchmarks/moc.py --repeats 7"
  "45 benchmarks/moc_int.py --tokens 1,2,4,16 --repeats 50"
  "30 benchmarks/adaln.py"
  "40 benchmarks/han_csam.py"
  "30 benchmarks/kv_quant.py"
  "30 benchmarks/patch_embed.py"
  "30 benchmarks/ema.py"
)

run_steps() {  # name, steps...
  local name=$1
  shift
  mkdir -p "$out"
  local log="$out/gpu_$name.txt"
  {
    date -u +"%Y-%m-%d %H:%M UTC"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
    "$py" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
  } 2>&1 | tee "$log"
  if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device here: this script is for the GPU machine" | tee -a "$log"
    return 1
  fi
  local step limit cmd start rc
  for step in "$@"; do
    limit=${step%% *}
    cmd=${step#* }
    echo -e "\n\$ python $cmd   (limit ${limit}s)" | tee -a "$log"
    start=$SECONDS
    timeout "$limit" "$py" $cmd 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    echo "-> exit $rc after $((SECONDS - start)) s$([ "$rc" = 124 ] && echo ' (time limit)')" | tee -a "$log"
  done
}

case $part in
  tests) run_steps tests "${TESTS[@]}" ;;
  bench) run_steps bench "${BENCH[@]}" ;;
  list)
    printf 'tests:\n'; printf '  %s\n' "${TESTS[@]}"
    printf 'bench:\n'; printf '  %s\n' "${BENCH[@]}" ;;
  *) echo "usage: bash benchmarks/gpu_check.sh tests|bench|list [OUT_DIR]" >&2; exit 2 ;;
esac
