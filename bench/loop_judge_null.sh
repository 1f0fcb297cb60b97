#!/bin/bash
# pi_0 against itself (different sampling seeds), judged like the demo's eval, then pairwise for position consistency.
set -e
cd "$(dirname "$0")/.."
R=.venv/bin/rlaif
O=${1:-outputs/judge-null}   # output folder (argument)
GEN="--prompts prompts/demo.jsonl n=4 max_tokens=64 temperature=0.7 progress=false"
t0=$(date +%s)
$R generate $GEN --out $O/s1 seed=1
$R generate $GEN --out $O/s2 seed=2
t1=$(date +%s); echo "GEN_S $((t1-t0))"
$R eval --a $O/s1/candidates.jsonl --b $O/s2/candidates.jsonl --rubric answer_likelihood --rubric answer_checks \
   n_per_prompt=4 --out $O/default progress=false
t2=$(date +%s); echo "EVAL_DEFAULT_S $((t2-t1))"
$R eval --a $O/s1/candidates.jsonl --b $O/s2/candidates.jsonl --rubric overall_preference \
   n_per_prompt=2 --out $O/pairwise progress=false
t3=$(date +%s); echo "EVAL_PAIRWISE_S $((t3-t2))"
