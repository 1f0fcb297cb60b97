"""Trainers that consume preference datasets: reward model (rm.py) and DPO (dpo.py).

Heavy imports (torch, transformers) happen inside these modules, not here.
"""
