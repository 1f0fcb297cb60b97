#!/usr/bin/env bash
# One GPU session: rlaif's own RM, DPO and GRPO trainers beside bench/gpu_check.py's plain loop, per shape.
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
#   SHAPE     bench/gpu_session.py --shape SHAPE, for each SHAPE of GPU_SESSION_SHAPES (default
#             "360m 1.7b"; the rehearsal: "tiny"): a random-weight model of that shape with the
#             carried tokenizer, rlaif's RM, DPO and GRPO (hf rollouts) on 512-1024-token rows, each
#             followed by gpu_check's plain loop on the same rows; tokens/s, MFU, peak GiB
#   table     session.md: the markdown table of session.json
# STAGES="env 360m table" runs only those (default: all).
# Everything lands in $OUT (flat): session.log, stages.tsv, env.txt, session.json, session.md.
# About 5-6 minutes on one H100 (360m ~2 min, 1.7b ~3 min); the CPU rehearsal ~2-3 minutes.
set -u
WHL=$(realpath -m "${WHL:-.whl}"); TOK=$(realpath -m "${TOK:-.gpucarry/tok}")
cd "$(dirname "$0")/.."
REHEARSAL=0
[ "${1:-}" = "--cpu-rehearsal" ] && REHEARSAL=1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
WORK=/tmp/rlaif-gpu-session
rm -rf "$WORK" && mkdir -p "$WORK"
if [ $REHEARSAL = 1 ]; then
  OUT=${OUT:-/tmp/gpu-rehearsal}
  PY=${PY:-.venv/bin/python}
  SHAPES=${GPU_SESSION_SHAPES:-tiny}; CPU="--cpu"
  T_ENV=120; T_SHAPE=600  # generous: the CPU is shared
else
  : "${OUT:?OUT must be set (the device tool output folder)}"
  PY=python3
  SHAPES=${GPU_SESSION_SHAPES:-360m 1.7b}; CPU=""
  T_ENV=45; T_SHAPE=200
fi
STAGES=${STAGES:-env $SHAPES table}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
printf 'stage\trc\tseconds\tlast_error\n' > "$OUT/stages.tsv"
rm -f "$OUT/session.json" "$OUT/session.md"

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

if [ $REHEARSAL = 0 ]; then export PYTHONPATH="/tmp/site:$PWD"; else export PYTHONPATH="$PWD"; fi
export -f env_stage; export REHEARSAL PY OUT WHL
stage env "$T_ENV" bash -c env_stage
for shape in $SHAPES; do
  stage "$shape" "$T_SHAPE" $PY bench/gpu_session.py --shape "$shape" --tokenizer "$TOK" --out "$OUT" --work "$WORK" $CPU
done
stage table 30 $PY bench/gpu_session.py --table --out "$OUT"
echo "=== stages"; column -t -s $'\t' "$OUT/stages.tsv" 2>/dev/null || cat "$OUT/stages.tsv"
sleep 1
