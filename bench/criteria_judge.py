"""Can a judge model score per-prompt criteria (`rlaif.judging.criteria`)?

``--scoring lines``: hand-made answers that meet all, some or none of each checklist, scored with the
judge's real chat; prints each reply and reward. ``--scoring yes_no`` (default): hand-written pairs
(question, criterion, an answer that meets it, one that does not); agreement is the share of pairs
whose meeting answer gets the higher ``s = 2 P(Yes) / (P(Yes) + P(No))``.

    PYTHONPATH=. python bench/criteria_judge.py [--scoring yes_no|lines] [--model smollm2-135m] [--engine hf]
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


PAIRS = [  # (question, criterion, an answer meeting it, one that does not)
    ("What colour is the sky?", "The answer is a single word", "Blue.",
     "The sky is blue because of the scattering of sunlight in the air."),
    ("What colour is the sky?", "Includes the word 'blue'", "It is blue.", "It is grey today."),
    ("Name a fruit.", "The answer names a fruit", "Apple", "Car"),
    ("Name an animal.", "The answer names an animal", "A dog.", "A table."),
    ("Name a country.", "The answer names a country", "France", "Sandwich"),
    ("What is the capital of France?", "Names Paris", "Paris is the capital of France.", "Lyon is the capital."),
    ("What is 2 + 2?", "The answer is 4", "4", "5"),
    ("Say hello.", "The answer is polite", "Hello! Nice to meet you.", "Go away, I do not care."),
    ("Describe the sea.", "The answer is longer than one sentence",
     "The sea is vast and blue. It covers most of the planet. Waves move across it.", "Wet."),
    ("Describe the sea.", "The answer mentions water", "The sea is a huge body of salt water.", "It is big."),
    ("Name a planet.", "The answer names a planet", "Mars", "Paris"),
    ("Write a greeting in French.", "The answer is in French", "Bonjour, comment allez-vous ?",
     "Good morning, how are you?"),
]


def yes_no(judge) -> None:
    from rlaif.judging.criteria import score_yes_no

    start = time.perf_counter()
    jobs = [([{"role": "user", "content": q}], answer, [{"criterion": c, "weight": 1.0}])
            for q, c, good, bad in PAIRS for answer in (good, bad)]
    scored = score_yes_no(judge, jobs)
    agree = 0
    for index, (question, criterion, good, bad) in enumerate(PAIRS):
        meets, fails = scored[2 * index].scores, scored[2 * index + 1].scores
        ok = meets is not None and fails is not None and meets[0] > fails[0]
        agree += ok
        print(f"  {'ok ' if ok else 'BAD'} s(meets) {meets and round(meets[0], 3)}  s(fails) "
              f"{fails and round(fails[0], 3)}  {criterion!r}")
    print(f"agreement {agree}/{len(PAIRS)} ({time.perf_counter() - start:.0f} s for {len(jobs)} questions, one call)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--engine", default="hf")
    parser.add_argument("--scoring", default="yes_no", choices=["yes_no", "lines"])
    args = parser.parse_args()
    judge = load_backend(BackendConfig(engine=args.engine, model=resolve_model(args.model)))
    if args.scoring == "yes_no":
        yes_no(judge)
        judge.close()
        return
    for question, criteria, answers in CASES:
        start = time.perf_counter()
        jobs = [([{"role": "user", "content": question}], answer, criteria) for answer in answers]
        scored = score_criteria(judge, jobs, seed=0, scoring="lines")
        print(f"{question} ({len(criteria)} criteria, {time.perf_counter() - start:.0f} s)")
        for answer, result in zip(answers, scored):
            print(f"  reward {result.reward}  scores {result.scores}  reply {result.raw!r}  <- {answer[:40]!r}")
    judge.close()


if __name__ == "__main__":
    main()
