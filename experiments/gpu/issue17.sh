#!/usr/bin/env bash
# Issue 17's GPU checks in one call of the device tool (about 9 minutes on one H200):
#   1. awd_lstm_ptb's first epochs, alone on the GPU (clean speed);
#   2. the ablation of ptb_cpu_hour at the recipe's length in epochs (10; its 60 CPU
#      minutes reached 10.1), the points as concurrent processes on the one GPU
#      (under CUDA MPS when it starts, so that their small kernels overlap).
# Needs PTB in .gpu_data/ptb and the ml_collections wheel in .whl (both git-ignored,
# carried). Everything lands in $OUT: issue17.log and runs.tgz (metrics, configs, logs).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
LOG=$OUT/issue17.log
exec > >(tee -a "$LOG") 2>&1
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 JAX_LM_DATA_DIR=$PWD/.gpu_data
export XLA_PYTHON_CLIENT_PREALLOCATE=false
R=/tmp/runs; mkdir -p $R
jl() { python3 -m jax_lm "$@"; }
echo "== $(date -u) commit $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' + uncommitted')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import jax, optax, flax; print('jax', jax.__version__, jax.devices(), 'optax', optax.__version__, 'flax', flax.__version__)"

echo "== [$(el) s] 1. awd_lstm_ptb, 2 minutes of training, alone"
timeout 250 python3 -m jax_lm train --config awd_lstm_ptb --no-progress --workdir $R/awd \
  --config.train.time_budget_minutes=2.0 --config.sample.num_samples=0 > $R/awd.log 2>&1
echo "awd exit $?"; tail -n 25 $R/awd.log

echo "== [$(el) s] 2. MPS"
MPS=off
if command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
  mkdir -p /tmp/mps /tmp/mpslog
  if nvidia-cuda-mps-control -d && timeout 60 python3 -c "import jax.numpy as j; print(float(j.ones(3).sum()))"; then
    MPS=on
  else
    echo quit | nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
fi
echo "MPS $MPS"

echo "== [$(el) s] 3. ablation, 10 epochs each, concurrent"
LEFT=$(( 560 - $(el) ))
point() {  # name, overrides...
  local name=$1; shift
  timeout $LEFT python3 -m jax_lm train --config ptb_cpu_hour --no-progress --workdir $R/ablation/$name \
    --config.train.time_budget_minutes=0 --config.train.epochs=10 --config.sample.num_samples=0 \
    "$@" > $R/ablation-$name.log 2>&1
  echo "[$(el) s] $name exit $?"
}
point base &
point locked_dropout_off --config.model.locked_dropout=False &
point layer_dropout_0 --config.model.dropout_input=0 --config.model.dropout_hidden=0 --config.model.dropout_output=0 &
point embed_dropout_0 --config.model.embed_dropout=0 &
point weight_drop_0 --config.model.weight_drop=0 &
point ar_tar_0 --config.model.ar=0 --config.model.tar=0 &
point ntasgd_off --config.train.ntasgd_patience=0 &
sleep 90; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
wait
for f in $R/ablation-*.log; do echo "-- $f"; tail -n 4 "$f"; done
[ $MPS = on ] && echo quit | nvidia-cuda-mps-control
echo "== [$(el) s] done"
cd $R && tar czf $OUT/runs.tgz --exclude=checkpoints --exclude=tensorboard . && ls -la $OUT
