"""Weak-to-strong generalisation (Burns et al. 2023): the parts of `pipeline.weak_to_strong`.

config.py      the recipe: W2SArguments (models, task, protocol), W2SConfig (TrainingArguments), W2SModelConfig
datasets.py    the task registry: toy, sciq, boolq, sst2, cosmos_qa, or a JSON Lines file -> (text, label)
losses.py      soft-label cross-entropy and the auxiliary confidence loss (logconf) with its alpha ramp
train.py       a 2-class sequence-classification head on a causal LM, trained with transformers' Trainer
metrics.py     accuracy, performance gap recovered (PGR) with its edge cases, agreement, seed statistics
cache.py       sub-run results stored under a hash of everything that determines them
experiment.py  the sub-runs of one run, cached, and the per-seed protocol (weak, labels, ceiling, students)
summary.py     per-student metrics, median and spread over seeds, the results table, metrics.json's flat keys
plots.py       the PGR / accuracy bar chart with seed spread
sweep.py       `python -m pipeline.w2s.sweep`: the stage over several model pairs, one table
"""
