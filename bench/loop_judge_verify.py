"""Agreement of the embedded judge's per-response scores with a verifiable check (short-answer demo prompts).

For every prompt with a checkable answer, all responses (both sides of an eval) and their per-source scores;
over every within-prompt pair where exactly one response is correct: how often the source scores the correct
one higher (ties: half). Also the null win rate per category. Usage: python bench/loop_judge_verify.py EVAL_DIR (an `rlaif eval` output, e.g. outputs/judge-null/default)
"""
import json
import re
import sys
from itertools import combinations

CHECKS = {
    "math-mul": lambda s: "391" in s,
    "math-linear": lambda s: re.search(r"x\s*=\s*5\b", s) is not None,
    "math-speed": lambda s: re.search(r"\b72\b", s) is not None,
    "math-prime": lambda s: re.search(r"not\s+(a\s+)?prime|13\s*[x×*]\s*17|17\s*[x×*]\s*13", s, re.I) is not None,
    "math-dice": lambda s: re.search(r"1\s*/\s*6\b|6\s*/\s*36|16\.6|0\.16", s) is not None,
    "math-temp": lambda s: re.search(r"\b37(\.0)?\b", s) is not None,
    "fact-canada": lambda s: "ottawa" in s.lower(),
    "fact-austen": lambda s: "austen" in s.lower(),
    "fact-bones": lambda s: re.search(r"\b206\b", s) is not None,
    "fact-moons": lambda s: (m := re.search(r"saturn|jupiter|uranus|neptune|mars|earth", s, re.I)) is not None
    and m.group(0).lower() == "saturn",
    "fact-moon-landing": lambda s: "1969" in s and "armstrong" in s.lower(),
}

rows = [json.loads(x) for x in open(sys.argv[1] + "/eval.jsonl")]
sources = list(rows[0]["votes"])
resp: dict[str, list[tuple[str, dict]]] = {}
for r in rows:
    if r["id"] not in CHECKS:
        continue
    for side in "ab":
        resp.setdefault(r["id"], []).append((r[f"response_{side}"], {s: v.get(f"score_{side}") for s, v in r["votes"].items()}))
n_resp = sum(len(v) for v in resp.values())
n_ok = sum(CHECKS[p](t) for p, v in resp.items() for t, _ in v)
print(f"checkable prompts {len(resp)}, responses {n_resp}, correct {n_ok}")
for s in sources + (["default(majority)"] if len(sources) > 1 else []):
    agree = ties = n = 0
    for p, v in resp.items():
        for (ta, sa), (tb, sb) in combinations(v, 2):
            ca, cb = CHECKS[p](ta), CHECKS[p](tb)
            if ca == cb:
                continue
            good_s, bad_s = (sa, sb) if ca else (sb, sa)
            names = sources if s == "default(majority)" else [s]
            if any(good_s[x] is None or bad_s[x] is None for x in names):
                continue
            # as rlaif eval combines sources: majority of the per-source outcomes (a tie votes for neither)
            vote = sum((good_s[x] > bad_s[x]) - (good_s[x] < bad_s[x]) for x in names)
            n += 1
            agree += vote > 0
            ties += vote == 0
    if n:
        print(f"{s}: pairs with one correct {n}: judge prefers the correct one {agree} ({agree / n:.2f}), ties {ties}, "
              f"agreement (ties half) {(agree + ties / 2) / n:.2f}")
