#!/usr/bin/env bash
# Issue 17's GPU checks in one call of the device tool (about 9 minutes on one H200):
#   1. awd_lstm_ptb's first epochs, alone on the GPU (clean speed);
#   2. the ablation of ptb_cpu_hour at the recipe's length in epochs (10; its 60 CPU
#      minutes reached 10.1), the points as concurrent processes on the one GPU
#      (under CUDA MPS when it starts, so that their small kernels overlap).
# First run experiments/gpu/prepare.sh here (wheels into .whl, PTB into .gpu_data; carry
# both). Everything lands in $OUT: issue17.log and runs.tgz (metrics, configs, logs).
# SMOKE=1 runs the same steps on a CPU with tiny budgets, to check the plumbing (imports,
# data, exit codes, waits, the tarball); there the runs' compilations outlast its deadlines.
set -u
OUT=${OUT:-/tmp/issue17-out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  AWD_MIN=0.05; EPOCHS=1; DEADLINE=400
  EXTRA=(--config.data.max_train_lines=50 --config.data.eval_batch_size=64)
  PY=${PY:-.venv/bin/python}
else
  AWD_MIN=2.0; EPOCHS=10; DEADLINE=560; EXTRA=(); PY=python3
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=$PWD:/tmp/site JAX_LM_DATA_DIR=$PWD/.gpu_data
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
R=/tmp/issue17-runs; rm -rf $R; mkdir -p $R
train() { timeout "$1" $PY -m jax_lm train --no-progress "${@:2}" "${EXTRA[@]}"; }
echo "== $(date -u) commit $(git rev-parse --short HEAD 2>/dev/null)"
[ "$SMOKE" = 1 ] || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import jax, optax, flax, datasets; print('jax', jax.__version__, jax.devices(), 'optax', optax.__version__, 'flax', flax.__version__, 'datasets', datasets.__version__)" || exit 1

echo "== [$(el) s] 0. PTB through the data pipeline once (fills the cache the runs share)"
DATA=$($PY -c "from jax_lm.data import shared_data_dir; print(shared_data_dir())")
timeout 120 $PY -m jax_lm stats "$DATA/ptb" --level word --eos "<eos>" || { echo "stats failed: stopping"; exit 1; }

echo "== [$(el) s] 1. awd_lstm_ptb, $AWD_MIN minutes of training, alone"
train 250 --config awd_lstm_ptb --workdir $R/awd --config.train.time_budget_minutes=$AWD_MIN \
  --config.sample.num_samples=0 > $R/awd.log 2>&1
rc=$?; echo "awd exit $rc"; tail -n 25 $R/awd.log

echo "== [$(el) s] 2. MPS"
MPS=off
if [ "$SMOKE" != 1 ] && command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
  mkdir -p /tmp/mps /tmp/mpslog
  if nvidia-cuda-mps-control -d && timeout 60 $PY -c "import jax.numpy as j; print(float(j.ones(3).sum()))"; then
    MPS=on
  else
    echo quit | nvidia-cuda-mps-control; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
fi
echo "MPS $MPS"

echo "== [$(el) s] 3. ablation, $EPOCHS epochs each, concurrent"
LEFT=$(( DEADLINE - $(el) ))
point() {  # name, overrides...
  local name=$1; shift
  train $LEFT --config ptb_cpu_hour --workdir $R/ablation/$name --config.sample.num_samples=0 \
    --config.train.time_budget_minutes=0 --config.train.epochs=$EPOCHS "$@" > $R/ablation-$name.log 2>&1
  local rc=$?; echo "[$(el) s] $name exit $rc"
}
pids=()
point base & pids+=($!)
point locked_dropout_off --config.model.locked_dropout=False & pids+=($!)
point layer_dropout_0 --config.model.dropout_input=0 --config.model.dropout_hidden=0 \
  --config.model.dropout_output=0 & pids+=($!)
point embed_dropout_0 --config.model.embed_dropout=0 & pids+=($!)
point weight_drop_0 --config.model.weight_drop=0 & pids+=($!)
point ar_tar_0 --config.model.ar=0 --config.model.tar=0 & pids+=($!)
point ntasgd_off --config.train.ntasgd_patience=0 & pids+=($!)
[ "$SMOKE" = 1 ] || { sleep 90; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; }
wait "${pids[@]}"
for f in $R/ablation-*.log; do echo "-- $f"; tail -n 3 "$f"; done
[ $MPS = on ] && echo quit | nvidia-cuda-mps-control
echo "== [$(el) s] done"
tar czf $OUT/runs.tgz -C $R --exclude=checkpoints --exclude=tensorboard . && ls -la $OUT
