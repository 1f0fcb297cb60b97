"""Online RL: GRPO, RLOO and PPO with rollouts from a live engine."""
