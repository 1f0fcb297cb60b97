"""Online RL: GRPO, RLOO and PPO with rollouts from a live engine.

A step, top to bottom: trainer.rollout_step samples and rewards (rollouts.py, rlaif.rewards), builds
the batch (batch.py), scores it and takes the advantages (step.py, the algorithm's rules in
algorithms.py, the formulas in maths.py), updates (step.update) and syncs the engine.
"""
