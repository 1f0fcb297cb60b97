"""Can a judge model score per-prompt criteria (`rlaif.judging.criteria`)? Hand-made answers that meet
all, some or none of each checklist, scored with the judge's real chat; prints each reply and reward.

    PYTHONPATH=. python bench/criteria_judge.py [--model smollm2-135m] [--engine hf]
"""

from __future__ import annotations

import argparse
import time

from rlaif.backends import load_backend
from rlaif.backends.base import BackendConfig
from rlaif.judging.criteria import score_criteria
from rlaif.models import resolve_model

CASES = [  # (question, criteria, answers meeting all, some or none of the wanted criteria)
    ("What colour is the sky?",
     [{"criterion": "The answer is a single word", "weight": 1},
      {"criterion": "Includes the word 'blue'", "weight": 1}],
     ["Blue.", "The sky is blue because of Rayleigh scattering of sunlight in the atmosphere.", "Green",
      "I don't know, maybe it depends on the weather."]),
    ("Name a fruit. Answer in one word.",
     [{"criterion": "The answer is a single word", "weight": 2},
      {"criterion": "The answer is longer than one sentence", "weight": -1},
      {"criterion": "The answer names a fruit", "weight": 1}],
     ["Apple", "Banana.", "A fruit that many people like is the mango, which grows in warm countries. It is sweet.",
      "Car"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--engine", default="hf")
    args = parser.parse_args()
    judge = load_backend(BackendConfig(engine=args.engine, model=resolve_model(args.model)))
    for question, criteria, answers in CASES:
        start = time.perf_counter()
        jobs = [([{"role": "user", "content": question}], answer, criteria) for answer in answers]
        scored = score_criteria(judge, jobs, seed=0)
        print(f"{question} ({len(criteria)} criteria, {time.perf_counter() - start:.0f} s)")
        for answer, result in zip(answers, scored):
            print(f"  reward {result.reward}  scores {result.scores}  reply {result.raw!r}  <- {answer[:40]!r}")
    judge.close()


if __name__ == "__main__":
    main()
