"""Trainers: on preference datasets, the reward model (rm.py) and DPO (dpo.py); online RL with
rollouts from a live engine, GRPO, RLOO and PPO (online/). Their shared options: config.py.

Heavy imports (torch, transformers) happen inside these modules, not here.
"""
