"""The parts of PPO on hand-computed cases: GAE, whitening, the clipped losses, where the reward lands,
EOS masks, the KL controller, and log-probs recomputed at the rollout temperature."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.kl import kl_estimates
from pipeline.rl.advantages import generalized_advantage_estimation, kl_penalised_rewards, last_token_index, whiten
from pipeline.rl.kl_control import AdaptiveKLController, FixedKLController
from pipeline.rl.losses import clipped_policy_loss, clipped_value_loss, explained_variance
from pipeline.rl.rollout import Reference, collect_rollout, cut_at_eos, encode_prompts, response_logprobs
from pipeline.rl.value import ActorCritic, position_ids_from

torch.set_num_threads(1)


# --- GAE --------------------------------------------------------------------------------------------


def test_gae_matches_a_hand_computed_case_and_ignores_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]])  # 5.0 sits on padding: must be ignored
    values = torch.tensor([[0.5, 0.6, 0.7], [0.5, 0.6, 9.0]])  # so must 9.0
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = generalized_advantage_estimation(rewards, values, mask, gamma=0.9, lam=0.8)
    # Row 0: δ2 = 1 − 0.7 = 0.3; δ1 = 0.9·0.7 − 0.6 = 0.03; δ0 = 0.9·0.6 − 0.5 = 0.04;
    # A_t = δ_t + 0.72·A_{t+1}.
    a2 = 0.3
    a1 = 0.03 + 0.72 * a2
    a0 = 0.04 + 0.72 * a1
    # Row 1 ends at t = 1: δ1 = 1 + 0.9·0 − 0.6 = 0.4 (no value after the end); δ0 = 0.04.
    b1 = 0.4
    b0 = 0.04 + 0.72 * b1
    assert torch.allclose(advantages, torch.tensor([[a0, a1, a2], [b0, b1, 0.0]]), atol=1e-6)
    assert torch.allclose(
        returns, torch.tensor([[a0 + 0.5, a1 + 0.6, a2 + 0.7], [b0 + 0.5, b1 + 0.6, 0.0]]), atol=1e-6
    )


def test_gae_with_gamma_and_lambda_one_is_the_monte_carlo_return_minus_the_value():
    rewards = torch.tensor([[0.1, -0.2, 0.3, 1.0]])
    values = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    advantages, returns = generalized_advantage_estimation(rewards, values, torch.ones(1, 4), gamma=1.0, lam=1.0)
    reward_to_go = torch.tensor([[1.2, 1.1, 1.3, 1.0]])
    assert torch.allclose(returns, reward_to_go, atol=1e-6)
    assert torch.allclose(advantages, reward_to_go - values, atol=1e-6)


# --- whitening --------------------------------------------------------------------------------------


def test_whitening_uses_real_tokens_only_and_keeps_padding_zero():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    white = whiten(values, mask)
    real = white[mask.bool()]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert real.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    assert (white[~mask.bool()] == 0).all()
    expected = (torch.tensor([1.0, 2, 3, 4, 5]) - 3) / math.sqrt(2)
    assert torch.allclose(real, expected, atol=1e-5)
    scaled = whiten(values, mask, shift_mean=False)[mask.bool()]
    assert scaled.mean().item() == pytest.approx(3.0, abs=1e-5)  # the mean is kept, only the spread changes


# --- where the reward lands ---------------------------------------------------------------------------


def test_score_lands_on_the_true_last_token_kl_on_every_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [0.1, 0.1, 0.1, 0.1]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])  # EOS at 1; cut by the limit; EOS first
    scores = torch.tensor([2.0, -1.0, 3.0])
    rewards = kl_penalised_rewards(scores, kl, mask, beta=0.5)
    expected = torch.tensor(
        [
            [-0.05, -0.1 + 2.0, 0.0, 0.0],
            [-0.25, -0.3, -0.35, -0.4 - 1.0],
            [-0.05 + 3.0, 0.0, 0.0, 0.0],
        ]
    )
    assert torch.allclose(rewards, expected, atol=1e-6)
    assert last_token_index(torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])).tolist() == [3, 1]  # left and right padding
    with pytest.raises(ValueError, match="β must be >= 0"):
        kl_penalised_rewards(scores, kl, mask, beta=-0.1)


def test_response_mask_ends_at_the_first_eos_even_when_pad_equals_eos():
    eos, pad = 0, 1
    ids = torch.tensor([[5, 0, 1, 1], [5, 6, 7, 8], [0, 1, 1, 1]])
    cut, mask, finished = cut_at_eos(ids, eos, pad)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert finished.tolist() == [True, False, True]
    assert cut.tolist() == [[5, 0, 1, 1], [5, 6, 7, 8], [0, 1, 1, 1]]
    # pad == EOS: generate pads finished rows with EOS; the first EOS still ends the response and is kept.
    cut, mask, finished = cut_at_eos(torch.tensor([[5, 0, 0, 0], [0, 0, 0, 0]]), eos, eos)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]] and finished.tolist() == [True, True]


# --- losses -----------------------------------------------------------------------------------------


def test_clipped_policy_loss_on_hand_cases():
    old = torch.zeros(1, 4)
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.1]])).requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -1.0, 2.0]])
    out = clipped_policy_loss(logprobs, old, advantages, torch.ones(1, 4), clip_range=0.2)
    # per token max(−A·ρ, −A·clip(ρ)): ρ=1.5, A=1 -> −1.2 (clipped); ρ=0.5, A=1 -> −0.5 (unclipped);
    # ρ=0.5, A=−1 -> 0.8 (clipped); ρ=1.1, A=2 -> −2.2 (inside the range).
    assert out.loss.item() == pytest.approx((-1.2 - 0.5 + 0.8 - 2.2) / 4, abs=1e-6)
    assert out.clip_fraction.item() == pytest.approx(0.5)
    out.loss.backward()
    # Clipped tokens carry no gradient; the others −A·ρ/4 (d ρ / d log π = ρ).
    assert torch.allclose(logprobs.grad, torch.tensor([[0.0, -0.5 / 4, 0.0, -2.2 / 4]]), atol=1e-6)


def test_clipped_value_loss_takes_the_pessimistic_error():
    values = torch.tensor([[1.0, 0.1, 0.0]], requires_grad=True)
    old_values = torch.zeros(1, 3)
    returns = torch.tensor([[1.0, 1.0, 0.0]])
    out = clipped_value_loss(values, old_values, returns, torch.tensor([[1, 1, 0]]), clip_range=0.2)
    # token 0: V moved by 1 (clipped to 0.2): max(0, 0.8²) = 0.64; token 1: inside the range: 0.9² = 0.81.
    assert out.loss.item() == pytest.approx(0.5 * (0.64 + 0.81) / 2, abs=1e-6)
    assert out.clip_fraction.item() == pytest.approx(0.5)


def test_token_count_makes_accumulated_micro_batches_equal_one_batch():
    torch.manual_seed(0)
    logprobs, old, advantages = torch.randn(4, 6), torch.randn(4, 6) * 0.1, torch.randn(4, 6)
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4, [1] * 5 + [0], [1] + [0] * 5])
    whole = clipped_policy_loss(logprobs, old, advantages, mask, 0.2).loss
    total = mask.sum()
    parts = [
        clipped_policy_loss(logprobs[rows], old[rows], advantages[rows], mask[rows], 0.2, total).loss
        for rows in (slice(0, 1), slice(1, 4))
    ]
    assert sum(parts).item() == pytest.approx(whole.item(), abs=1e-6)
    # The usual shortcut (mean of micro-batch means) is not the same thing for ragged responses.
    naive = (
        sum(
            clipped_policy_loss(logprobs[r], old[r], advantages[r], mask[r], 0.2).loss
            for r in (slice(0, 1), slice(1, 4))
        )
        / 2
    )
    assert abs(naive.item() - whole.item()) > 1e-3


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(returns.clone(), returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)


# --- KL controller ----------------------------------------------------------------------------------


def test_adaptive_kl_controller_moves_towards_the_target_by_at_most_20_percent_per_horizon():
    control = AdaptiveKLController(0.1, target=6.0, horizon=100)
    control.update(current_kl=12.0, n_episodes=100)  # twice the target: error clipped to +0.2
    assert control.value == pytest.approx(0.12)
    control.update(current_kl=3.0, n_episodes=50)  # half the target: error −0.5 -> −0.2, over half a horizon
    assert control.value == pytest.approx(0.12 * 0.9)
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.05
    with pytest.raises(ValueError, match="β must be >= 0"):
        FixedKLController(-0.01)


# --- log-probs at the rollout temperature -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_policy():
    from transformers import GPT2Config, GPT2LMHeadModel

    from pipeline.data.toy_world import ToyWorld
    from pipeline.tokenization import train_tokenizer

    tokenizer = train_tokenizer(ToyWorld(seed=0).pretraining_corpus(300), kind="char")
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=96,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # make EOS likely enough that some rows stop early and others run to the limit
        model.lm_head.weight[tokenizer.eos_token_id] += 0.5
    return model, tokenizer


PROMPTS = [
    "User: what is 7 + 5?\nBot:",
    "User: reverse the word: fox\nBot:",
    "User: what colour is a frog?\nBot:",
    "U",
]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_recomputed_logprobs_equal_the_sampling_distribution_on_left_padded_prompts(tiny_policy, temperature):
    from pipeline.decoding import build_generation_config

    model, tokenizer = tiny_policy
    query_ids, query_mask = encode_prompts(tokenizer, PROMPTS, torch.device("cpu"))
    assert (query_mask[:, 0] == 0).any() and (query_mask[:, -1] == 1).all()  # left padding
    config = build_generation_config(
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}, tokenizer, 12
    )
    config.output_scores, config.return_dict_in_generate = True, True
    torch.manual_seed(1)
    output = model.generate(input_ids=query_ids, attention_mask=query_mask, generation_config=config)
    response_ids, response_mask, _ = cut_at_eos(
        output.sequences[:, query_ids.shape[1] :], tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    sampling_logprobs = (
        torch.stack(output.scores, dim=1).log_softmax(-1).gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
    )

    actor_critic = ActorCritic(model)
    logits, _ = actor_critic(
        torch.cat([query_ids, response_ids], 1), torch.cat([query_mask, response_mask], 1), response_ids.shape[1]
    )
    recomputed = response_logprobs(logits / temperature, response_ids, 1.0)
    real = response_mask.bool()
    assert torch.allclose(recomputed[real], sampling_logprobs[real], atol=1e-4)
    if temperature != 1.0:  # the bug this guards against: scoring at another temperature than sampling
        wrong = response_logprobs(logits, response_ids, 1.0)
        assert not torch.allclose(wrong[real], sampling_logprobs[real], atol=1e-2)
    # Without the mask-aware positions, the left-padded rows would be scored at shifted positions.
    shifted = model(
        input_ids=torch.cat([query_ids, response_ids], 1), attention_mask=torch.cat([query_mask, response_mask], 1)
    ).logits
    shifted = response_logprobs(shifted[:, query_ids.shape[1] - 1 : -1] / temperature, response_ids, 1.0)
    padded_rows = query_mask[:, 0] == 0
    assert not torch.allclose(
        shifted[padded_rows][real[padded_rows]], sampling_logprobs[padded_rows][real[padded_rows]], atol=1e-3
    )
    assert torch.equal(position_ids_from(query_mask)[padded_rows][:, -1], query_mask[padded_rows].sum(1) - 1)


def test_rollout_of_a_policy_against_its_own_copy_has_exactly_zero_kl(tiny_policy):
    import copy

    model, tokenizer = tiny_policy
    torch.manual_seed(2)
    rollout = collect_rollout(
        ActorCritic(model), Reference(model=copy.deepcopy(model)), tokenizer, PROMPTS * 4, 16, 0.7, with_exact_kl=True
    )
    assert rollout.response_mask.sum(1).min() >= 1
    assert not rollout.finished.all() and rollout.finished.any()  # both kinds of rows are exercised
    for name, value in kl_estimates(rollout.logprobs, rollout.ref_logprobs).items():
        assert torch.allclose(value * rollout.response_mask, torch.zeros_like(value), atol=1e-5), name
    assert torch.allclose(rollout.exact_kl * rollout.response_mask, torch.zeros_like(rollout.exact_kl), atol=1e-5)
    assert (rollout.values == 0).all()  # the zero-initialised value head
    assert len(rollout.texts) == 16 and all(tokenizer.eos_token not in text for text in rollout.texts)


def test_rollout_in_length_groups_cut_to_their_columns_gives_the_padded_batch_figures(tiny_policy):
    import copy

    model, tokenizer = tiny_policy
    actor_critic, reference = ActorCritic(model), Reference(model=copy.deepcopy(model))
    rollouts = []
    for forward_batch_size in (None, 3):  # one pass over the padded batch; groups of similar length, trimmed
        torch.manual_seed(5)
        rollouts.append(collect_rollout(actor_critic, reference, tokenizer, PROMPTS * 3, 16, 1.0, forward_batch_size))
    padded, grouped = rollouts
    assert torch.equal(padded.response_ids, grouped.response_ids)
    lengths = padded.response_mask.sum(1)
    assert lengths.min() < lengths.max()  # rows of different lengths: the groups are cut differently
    mask = padded.response_mask.bool()
    for name in ("logprobs", "ref_logprobs", "values", "entropy"):
        assert torch.allclose(getattr(padded, name)[mask], getattr(grouped, name)[mask], atol=1e-5), name


def test_length_grouped_micro_batches_give_the_gradient_of_the_whole_mini_batch(tiny_policy):
    import copy
    from types import SimpleNamespace

    from accelerate import Accelerator

    from pipeline.rl.update import ppo_update

    model, tokenizer = tiny_policy
    torch.manual_seed(4)
    rollout = collect_rollout(
        ActorCritic(copy.deepcopy(model)), Reference(model=copy.deepcopy(model)), tokenizer, PROMPTS * 3, 16, 1.0
    )
    mask = rollout.response_mask
    batch = {
        **{k: v for k, v in vars(rollout).items() if isinstance(v, torch.Tensor)},
        "advantages": torch.randn(mask.shape) * mask,
        "returns": torch.randn(mask.shape) * mask,
    }
    moved = []
    for micro_batches in (1, 4):
        actor_critic = ActorCritic(copy.deepcopy(model).requires_grad_(True))
        before = {name: value.clone() for name, value in actor_critic.named_parameters()}
        optimizer = torch.optim.SGD(actor_critic.parameters(), lr=1.0)  # the step is minus the gradient
        settings = SimpleNamespace(
            temperature=1.0,
            ppo_epochs=1,
            num_mini_batches=1,
            gradient_accumulation_steps=micro_batches,
            cliprange=0.2,
            cliprange_value=0.2,
            vf_coef=0.1,
            entropy_coef=0.01,
            ptx_coef=0.0,
            max_grad_norm=0.0,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        ppo_update(Accelerator(cpu=True), actor_critic, optimizer, scheduler, batch, settings, torch.Generator())
        moved.append({name: before[name] - value for name, value in actor_critic.named_parameters()})
    assert any(step.abs().max() > 1e-4 for step in moved[0].values())
    for name, step in moved[0].items():
        assert torch.allclose(step, moved[1][name], atol=1e-6), name


# --- several samples per prompt, critic warm-up -------------------------------------------------------


def test_leave_one_out_baseline_is_the_mean_of_the_other_responses_to_the_same_prompt():
    from pipeline.rl.advantages import leave_one_out_baseline

    scores = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])  # two prompts, three responses each
    assert torch.allclose(leave_one_out_baseline(scores, 3), torch.tensor([4.0, 3.5, 1.5, 1.5, 1.5, 0.0]))
    centred = scores - leave_one_out_baseline(scores, 3)
    assert torch.allclose(
        centred.view(2, 3).sum(1), torch.zeros(2)
    )  # a group's centred scores sum to 0 (k·mean − k·mean)


def test_step_prompts_repeat_each_drawn_prompt_in_a_row_and_split_processes_by_group():
    from pipeline.rl.prompts import step_prompts

    pool = [f"p{i}" for i in range(50)]
    assert step_prompts(pool, 3, 8, 0, 0, 1) == step_prompts(pool, 3, 8, 0, 0, 1, samples_per_prompt=1)
    grouped = step_prompts(pool, 3, 8, 0, 0, 1, samples_per_prompt=4)
    assert (
        len(grouped) == 8
        and grouped[:4] == [grouped[0]] * 4
        and grouped[4:] == [grouped[4]] * 4
        and grouped[0] != grouped[4]
    )
    shares = [step_prompts(pool, 3, 8, 0, rank, 2, samples_per_prompt=4) for rank in (0, 1)]
    assert not set(shares[0]) & set(shares[1])  # the processes sample different prompts


def test_critic_warm_up_moves_the_critic_and_leaves_the_policy_and_its_adam_state_alone(tiny_policy):
    import copy
    from types import SimpleNamespace

    from accelerate import Accelerator

    from pipeline.rl.update import ppo_update

    model, tokenizer = tiny_policy
    actor_critic = ActorCritic(copy.deepcopy(model).requires_grad_(True))
    torch.manual_seed(3)
    rollout = collect_rollout(actor_critic, Reference(model=copy.deepcopy(model)), tokenizer, PROMPTS * 2, 8, 1.0)
    mask = rollout.response_mask
    returns = torch.randn(mask.shape) * mask
    batch = {
        **{k: v for k, v in vars(rollout).items() if isinstance(v, torch.Tensor)},
        "advantages": torch.randn(mask.shape) * mask,
        "returns": returns,
    }
    settings = SimpleNamespace(
        temperature=1.0,
        ppo_epochs=2,
        num_mini_batches=2,
        gradient_accumulation_steps=1,
        cliprange=0.2,
        cliprange_value=10.0,
        vf_coef=0.1,
        entropy_coef=0.0,
        ptx_coef=0.0,
        max_grad_norm=1.0,
    )
    optimizer = torch.optim.AdamW(actor_critic.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    policy_before = copy.deepcopy(actor_critic.policy.state_dict())
    head_before = actor_critic.value_head.weight.clone()
    ppo_update(
        Accelerator(cpu=True),
        actor_critic,
        optimizer,
        scheduler,
        batch,
        settings,
        torch.Generator().manual_seed(0),
        train_policy=False,
    )
    assert all(torch.equal(value, policy_before[name]) for name, value in actor_critic.policy.state_dict().items())
    assert not torch.equal(actor_critic.value_head.weight, head_before)
    assert all(
        p not in optimizer.state for p in actor_critic.policy.parameters()
    )  # its Adam moments start at the first real update
    ppo_update(
        Accelerator(cpu=True), actor_critic, optimizer, scheduler, batch, settings, torch.Generator().manual_seed(0)
    )
    assert any(not torch.equal(value, policy_before[name]) for name, value in actor_critic.policy.state_dict().items())


def test_the_direct_kl_term_pulls_a_drifted_policy_back_towards_the_reference(tiny_policy):
    import copy
    from types import SimpleNamespace

    from accelerate import Accelerator

    from pipeline.kl import exact_kl
    from pipeline.rl.update import ppo_update

    model, tokenizer = tiny_policy
    drifted = copy.deepcopy(model).requires_grad_(True)
    with torch.no_grad():
        drifted.lm_head.weight.add_(0.3 * torch.randn_like(drifted.lm_head.weight))
    actor_critic, reference = ActorCritic(drifted), Reference(model=copy.deepcopy(model))
    torch.manual_seed(4)
    rollout = collect_rollout(actor_critic, reference, tokenizer, PROMPTS * 4, 8, 1.0, with_exact_kl=True)
    mask = rollout.response_mask
    assert (rollout.exact_kl * mask).sum() > 0.1  # the drift is visible in the rollout's exact per-state KL
    batch = {
        **{k: v for k, v in vars(rollout).items() if isinstance(v, torch.Tensor)},
        "advantages": torch.zeros(mask.shape),
        "returns": torch.zeros(mask.shape),
    }
    settings = SimpleNamespace(
        temperature=1.0,
        ppo_epochs=4,
        num_mini_batches=1,
        gradient_accumulation_steps=2,
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.0,
        entropy_coef=0.0,
        ptx_coef=0.0,
        max_grad_norm=0.0,
    )
    optimizer = torch.optim.AdamW(actor_critic.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)

    def kl_now() -> float:
        with torch.no_grad():
            logits, _ = actor_critic(rollout.input_ids, rollout.attention_mask, mask.shape[1])
            return float(
                (
                    exact_kl(logits, reference.logits(rollout.input_ids, rollout.attention_mask, mask.shape[1])) * mask
                ).sum()
            )

    before = kl_now()
    stats = ppo_update(
        Accelerator(cpu=True),
        actor_critic,
        optimizer,
        scheduler,
        batch,
        settings,
        torch.Generator().manual_seed(0),
        reference=reference,
        kl_loss_coef=1.0,
    )
    assert kl_now() < 0.8 * before and stats["kl_loss"] > 0  # zero advantages: only the KL term moved the policy


# --- the final norm's own learning rate ---------------------------------------------------------------


def test_scaling_the_final_norm_by_one_over_t_is_sampling_at_temperature_t(tiny_policy):
    import copy

    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.models import final_norm

    model, tokenizer = tiny_policy
    name, norm = final_norm(model)
    assert name == "transformer.ln_f"
    sharper = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in final_norm(sharper)[1].parameters():
            parameter /= 0.7
    ids = torch.tensor([tokenizer("User: reverse the word: fox\nBot:")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(sharper(ids).logits, model(ids).logits / 0.7, atol=1e-5)
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    )
    assert final_norm(llama)[0] == "model.norm"


def test_the_final_norm_gets_its_own_learning_rate_and_no_parameter_is_left_out(tiny_policy):
    import copy

    from pipeline.ppo import PPOConfig, build_optimizer

    model, _ = tiny_policy
    actor_critic = ActorCritic(copy.deepcopy(model).requires_grad_(True))
    config = PPOConfig(
        learning_rate=1e-5,
        value_learning_rate=1e-3,
        final_norm_learning_rate=3e-2,
        max_steps=2,
        lr_scheduler_type="constant",
    )
    optimizer, _ = build_optimizer(actor_critic, config)
    groups = {group["lr"]: {id(p) for p in group["params"]} for group in optimizer.param_groups}
    ln_f = actor_critic.policy.transformer.ln_f
    assert groups[3e-2] == {id(ln_f.weight), id(ln_f.bias)}
    assert groups[1e-3] == {id(p) for p in actor_critic.value_head.parameters()}
    assert set().union(*groups.values()) == {id(p) for p in actor_critic.parameters()}
    assert sum(len(ids) for ids in groups.values()) == len(list(actor_critic.parameters()))  # each parameter once
    default = build_optimizer(actor_critic, PPOConfig(learning_rate=1e-5, value_learning_rate=1e-3, max_steps=2))[0]
    assert len(default.param_groups) == 2  # without the key the norm trains with the rest of the policy
