"""Policy objectives of the GRPO family, as pure jit-able functions.

Every named objective has the signature

  loss, metrics = rl_jax.objectives.<name>(logp, old_logp, advantages, mask, *, ref_logp=None, **hparams)

with `logp, old_logp, ref_logp, mask` of shape [B, T] and `advantages` [B] or [B, T]. `get(name)`
returns the function and `names()` lists them. Named methods are short recipes over the pieces
re-exported here (ratios, trust regions, aggregation, KL estimators, corrections), so a new
objective is a few lines: see `policy_loss`.
"""

from rl_jax.objectives.aggregation import (AGG_MODES, aggregate, masked_max, masked_mean, seq_mean_token_mean,
                                           seq_mean_token_sum, seq_mean_token_sum_norm, token_mean)
from rl_jax.objectives.core import get, names, policy_loss, register, start
from rl_jax.objectives.divergences import KL_ESTIMATORS, kl_k1, kl_k2, kl_k3, kl_k3_plus, kl_penalty
from rl_jax.objectives.inputs import PolicyInputs, prepare
from rl_jax.objectives.ratios import (prefix_min_log_weight, segment_log_ratio, segment_mean, sentence_segment_ids,
                                      sequence_log_ratio, sequence_token_log_ratio, token_log_ratio)
from rl_jax.objectives.trust_regions import (cispo_weight, clip_bounds_loss, clipped_surrogate, dcpo_bounds, dual_clip,
                                             sapo_gate)
from rl_jax.objectives.ppo import dapo, dcpo, dr_grpo, grpo, minpro, ngrpo, ppo_dual_clip, token_clip_terms
from rl_jax.objectives.sequence import dhpo, gmpo, gspo, gspo_token, rank_grpo, segment_entropy_scale, sspo
from rl_jax.objectives.gated import cispo, clip_cov, kl_cov, sapo, token_covariance
from rl_jax.objectives.hapo import entropy_temperature_stats, hapo, normalized_entropy
from rl_jax.objectives.gtpo import entropy_filter, gtpo, gtpo_conflict_weights
from rl_jax.objectives.corrections import mis, mis_weights, tis, tis_weights, with_correction
from rl_jax.objectives.offpolicy import minirl, opmd, topr
from rl_jax.objectives.reweighted import (entropy_band_surrogate, llds, llds_penalty, mask_runs, spine, steer,
                                         steer_weights)
from rl_jax.objectives.discriminative import discriminative_gap, disco, sequence_scores
