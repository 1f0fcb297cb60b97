#!/usr/bin/env bash
# One GPU session: rlaif's own trainers on a CUDA GPU, then the self-contained step benchmark.
#
#   bash bench/gpu_session.sh                  # on the GPU machine (python3 with torch+CUDA)
#   bash bench/gpu_session.sh --cpu-rehearsal  # here: the same stages on CPU with tiny shapes
# WHL (default .whl) and TOK (default .gpucarry/tok) name the carried wheels and tokenizer folder,
# relative to the directory it was started from; the script runs from its own checkout, so a
# snapshot of HEAD (git archive HEAD | tar -x -C .gpucarry/src) can be run with
#   cd .gpucarry/src && WHL=../../.whl TOK=../tok bash bench/gpu_session.sh
#
# Stages (each under its own `timeout`; a failing stage does not stop the later ones):
#   env       versions, GPU name, carried wheels installed (.whl/ -> /tmp/site), rlaif imports
#   build     a random-weight SmolLM2-360M-shaped model + the carried tokenizer (.gpucarry/tok)
#   train     bench/train_gpu.py: rlaif's RM and DPO trainers, bf16, tokens/s and MFU
#   grpo      `rlaif train grpo` with engine=hf rollouts and a python: reward
#   check     bench/gpu_check.py: RM/DPO/GRPO steps on the 360M and 1.7B shapes
# STAGES="env build train" runs only those (default: all five); TRAIN_ARGS replaces the train stage's arguments.
# Everything lands in $OUT (flat, at most 8 files): session.log, stages.tsv, env.txt,
# train_gpu.json, grpo_metrics.jsonl, grpo_summary.json, gpu_check.log.
set -u
WHL=$(realpath -m "${WHL:-.whl}"); TOK=$(realpath -m "${TOK:-.gpucarry/tok}")
cd "$(dirname "$0")/.."
REHEARSAL=0
STAGES=${STAGES:-env build train grpo check}
[ "${1:-}" = "--cpu-rehearsal" ] && REHEARSAL=1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
WORK=/tmp/rlaif-gpu-session
rm -rf "$WORK" && mkdir -p "$WORK"
if [ $REHEARSAL = 1 ]; then
  OUT=${OUT:-/tmp/gpu-rehearsal}
  PY=${PY:-.venv/bin/python}
  SHAPE=tiny; CHECK_ARGS="--cpu --tiny"; TRAIN_ARGS="--cpu --pairs 16 --batch-size 4 --max-length 256"
  GRPO_ARGS="steps=2 k=2 prompts_per_step=2 max_tokens=8"
  T_ENV=60; T_BUILD=60; T_TRAIN=120; T_GRPO=120; T_CHECK=120
else
  : "${OUT:?OUT must be set (the device tool output folder)}"
  PY=python3
  SHAPE=360m; CHECK_ARGS=""; TRAIN_ARGS=${TRAIN_ARGS:-"--pairs 512 --batch-size 16 --max-length 1024"}
  GRPO_ARGS="steps=5 k=8 prompts_per_step=8 max_tokens=128 rollout.batch_size=64 micro_batch_size=16"
  T_ENV=45; T_BUILD=45; T_TRAIN=110; T_GRPO=110; T_CHECK=150
fi
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
printf 'stage\trc\tseconds\tlast_error\n' > "$OUT/stages.tsv"

stage() {  # stage NAME TIMEOUT CMD...: run, time, record rc and the last error-looking line
  local name=$1 limit=$2; shift 2
  case " $STAGES " in *" $name "*) ;; *) echo "=== stage $name: skipped (STAGES=$STAGES)"; return 0 ;; esac
  echo "=== stage $name (timeout ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  cat "$WORK/$name.log"
  local err
  err=$(grep -E '^[A-Za-z_.]*(Error|Exception|error)[: ]|^rlaif: |Traceback|CUDA out of memory' "$WORK/$name.log" \
        | tail -1 | cut -c1-300 | tr '\t' ' ')
  [ $rc = 124 ] && err="timed out after ${limit}s; $err"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$err" >> "$OUT/stages.tsv"
  echo "=== stage $name: rc=$rc in $((SECONDS - t0))s"
}

env_stage() {
  if [ $REHEARSAL = 0 ] && ls "$WHL"/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl \
      || return 1
  fi
  { uname -a; nvidia-smi 2>&1 | head -15
    $PY -m pip list 2>/dev/null | grep -iE '^(torch|transformers|accelerate|peft|pyarrow|fsspec|huggingface.hub|numpy) '
    $PY - <<'EOF'
import torch, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "transformers", transformers.__version__)
import datasets, jsonschema, tenacity, gguf  # carried wheels
import rlaif.cli, rlaif.train.rm, rlaif.train.dpo, rlaif.train.online.trainer  # noqa
print("imports ok: datasets", datasets.__version__, "rlaif", rlaif.__file__)
EOF
  } | tee "$OUT/env.txt"
  return "${PIPESTATUS[0]}"
}

cat > "$WORK/rewards.py" <<'EOF'
def distinct(prompts, completions, **columns):
    """Share of distinct characters in a completion (varies between a random model's samples)."""
    return [len(set(c)) / max(len(c), 1) for c in completions]
EOF

if [ $REHEARSAL = 0 ]; then export PYTHONPATH="/tmp/site:$PWD"; else export PYTHONPATH="$PWD"; fi
export -f env_stage; export REHEARSAL PY OUT WHL
stage env "$T_ENV" bash -c env_stage
stage build "$T_BUILD" $PY bench/train_gpu.py --build $SHAPE --tokenizer "$TOK" --model "$WORK/model"
stage train "$T_TRAIN" $PY bench/train_gpu.py --model "$WORK/model" $TRAIN_ARGS --json "$OUT/train_gpu.json"
stage grpo "$T_GRPO" $PY -m rlaif.cli train grpo --prompts prompts/demo.jsonl --model "$WORK/model" \
  --reward "python:$WORK/rewards.py:distinct" --out "$WORK/grpo" engine=hf progress=false save_steps=0 \
  log_rollouts_every=0 lr=1e-6 $GRPO_ARGS
cp "$WORK/grpo/metrics.jsonl" "$OUT/grpo_metrics.jsonl" 2>/dev/null
cp "$WORK/grpo/summary.json" "$OUT/grpo_summary.json" 2>/dev/null
stage check "$T_CHECK" $PY bench/gpu_check.py $CHECK_ARGS
cp "$WORK/check.log" "$OUT/gpu_check.log" 2>/dev/null
echo "=== stages"; column -t -s $'\t' "$OUT/stages.tsv" 2>/dev/null || cat "$OUT/stages.tsv"
sleep 1
