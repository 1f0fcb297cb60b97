"""The judge methods, one class each, by the name a rubric's ``method`` gives."""

from __future__ import annotations

from rlaif.judging.methods.base import JudgeMethod
from rlaif.judging.methods.likelihood import LikelihoodMethod
from rlaif.judging.methods.logprob import LogprobMethod
from rlaif.judging.methods.pairwise import PairwiseMethod
from rlaif.judging.methods.rules import RulesMethod
from rlaif.judging.methods.verdict import VerdictMethod

METHODS: dict[str, JudgeMethod] = {method.name: method for method in (
    LogprobMethod(), VerdictMethod(), PairwiseMethod(), LikelihoodMethod(), RulesMethod())}
