"""The reward-modelling stage's parts: recipe, preference pairs, the reward model, and its evaluation."""
