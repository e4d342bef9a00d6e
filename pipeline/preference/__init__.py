"""The parts of the DPO stage (pipeline/dpo.py tells the story)."""
