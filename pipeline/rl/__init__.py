"""The parts of the project's PPO for language models (pipeline/ppo.py runs them; docs/stages/ppo.md tells the story).

Each module is one idea, written from the papers and cited where it follows or diverges from them:

    config.py       the recipe: PPOArguments, PPOModelArguments, PPOConfig, and the checks across them
    setup.py        the accelerator, policy, reference, critic, optimizer, and what every step uses (PPOParts)
    step.py         one PPO step: rollout, scores, per-token rewards, GAE, the PPO epochs; the step's log entry
    loop.py         the steps from the start or a checkpoint to max_steps, logged and checkpointed
    metrics.py      the per-step and final log lines, and the training half of metrics.json
    rollout.py      sample responses from left-padded prompts; recompute log-probs with the rollout's
                    temperature; response masks that end at the first EOS
    scoring.py      the score of a whole response: a learned reward model read at the true last token,
                    or the toy world's programmatic gold reward
    value.py        the critic: a separate value model or a scalar head on the policy (ActorCritic)
    advantages.py   per-token rewards (−β·KL_t, plus the score at the last real token), GAE, whitening
    losses.py       clipped policy loss, clipped value loss, entropy
    kl_control.py   fixed and adaptive KL coefficient (Ziegler et al. 2019)
    update.py       the PPO epochs over mini-batches, with gradient accumulation that scales correctly
    checkpoint.py   save and restore everything a resumed run needs
    trl_online.py   GRPO and RLOO through TRL's trainers, with the same reward and reference
    plots.py        reward and KL over steps

References: Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences" (per-token KL
penalty, adaptive β); Stiennon et al. 2020; Ouyang et al. 2022, "Training language models to follow
instructions with human feedback" (InstructGPT, PPO-ptx); Schulman et al. 2017 (PPO) and 2016 (GAE);
Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO: A Case Study on TL;DR
Summarization" (cited below as "N+ details").
"""
