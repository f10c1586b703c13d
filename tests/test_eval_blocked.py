"""Streamed full-ranking evaluation over item blocks (train.eval_item_block): the same ranks as the [B, V] path."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mos_jax.evaluation import NextItemQuery, predict_rows, target_ranks, target_ranks_blocked
from mos_jax.models import ModelConfig, build_model
from mos_jax.models.heads import PAD_LOGIT, item_scores
from mos_jax.training import step as step_lib
from mos_jax.training.config import TrainConfig
from mos_jax.training.parallel import Executor
from rank_checks import assert_ranks_agree

V, D, B = 23, 4, 6  # 23 items + padding row = 24 rows; block 5 does not divide it


def inputs(seed=0):
  """Small-integer queries and table: every product and sum is exact in float32, so every path (one [B, V] matmul or
  [B, block] products of any block size, on any CPU's kernels) computes the same scores, and ties are true ties."""
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.integers(-3, 4, size=(B, D)), jnp.float32)
  table = rng.integers(-3, 4, size=(V + 1, D)).astype(np.float32)
  table[7] = table[3]  # ties with target 3 (rows 0 and 1) exercise the tie rule (integer scores tie elsewhere too)
  target = jnp.asarray([3, 3, 23, 1, 12, 7], jnp.int32)
  history = jnp.asarray(rng.integers(0, V + 1, (B, 2, 3)), jnp.int32).at[0, 0, 0].set(7).at[1, 0, 0].set(3)
  return q, jnp.asarray(table), target, history


@pytest.mark.parametrize("exclude_history", [False, True])
@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
def test_blocked_ranks_equal_full_ranks(exclude_history, ties):
  q, table, target, history = inputs()
  logits = item_scores(q, table).at[:, 0].set(PAD_LOGIT)
  want, want_nan = target_ranks(logits, target, history, exclude_history=exclude_history, ties=ties)
  for block in (5, 1, 8, V + 1, 64):
    got, nan = target_ranks_blocked(q, table, target, history, block=block, exclude_history=exclude_history,
                                    ties=ties)
    np.testing.assert_array_equal(got, want, err_msg=f"block={block}")
    np.testing.assert_array_equal(nan, want_nan)
  assert int(want[0]) != int(target_ranks(logits, target, history, exclude_history=exclude_history,
                                          ties="optimistic" if ties == "pessimistic" else "pessimistic")[0][0]) \
      or exclude_history  # the tie with item 7 decides row 0's rank unless item 7 is excluded as history


def test_blocked_ranks_flag_nan_scores():
  q, table, target, history = inputs(1)
  q = q.at[2, 0].set(jnp.nan)
  _, nan = target_ranks_blocked(q, table, target, history, block=5, exclude_history=False)
  np.testing.assert_array_equal(nan, [False, False, True, False, False, False])


def test_predict_rows_blocked_matches_logits_path_and_errors():
  q, table, target, history = inputs(2)
  batches = [dict(items=np.asarray(history), target_item=np.asarray(target), weight=np.ones(B, np.float32))]
  want = predict_rows(lambda b: item_scores(q, table).at[:, 0].set(PAD_LOGIT), batches, task="next")
  got = predict_rows(lambda b: NextItemQuery(q, table), batches, task="next", item_block=5)
  np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match="item_block=5 needs predict_fn to return a NextItemQuery"):
    predict_rows(lambda b: item_scores(q, table), batches, task="next", item_block=5)
  with pytest.raises(ValueError, match="item_block: expected >= 0"):
    predict_rows(lambda b: NextItemQuery(q, table), batches, task="next", item_block=-1)


def test_executor_query_only_predictions_rank_like_the_logits():
  """The model's query and tied table (Executor.predict_fn(query_only=True)) give the ranks of its logits."""
  cfg = ModelConfig(name="mos", task="next", num_items=V, num_cats=3, num_sessions=2, session_len=3, embed_dim=8,
                    hidden_dim=8, num_heads=1, num_themes=2, dropout=0.0)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  tx = optax.sgd(0.1)
  graphdef, state = step_lib.init_state(model, tx)
  t = TrainConfig(batch_size=B, eval_batch_size=B)
  ex = Executor(t, graphdef, tx, optax.constant_schedule(0.1), "next", state, devices=jax.devices()[:1])
  _, _, target, history = inputs(3)
  batches = [dict(items=np.asarray(history), cats=np.asarray(history > 0, np.int32), target_item=np.asarray(target),
                  target_cat=np.ones(B, np.int32), weight=np.array([1, 1, 1, 1, 1, 0], np.float32))]
  # The two paths are differently shaped products, so a score may differ in the last bit (kernels differ between
  # CPU kinds): ranks must agree up to the candidates within rounding of the target's score (usually none).
  logits = np.asarray(jax.device_get(ex.predict_fn()(batches[0])))[:5]
  for exclude in (False, True):
    want = predict_rows(ex.predict_fn(), batches, task="next", exclude_history=exclude)
    got = predict_rows(ex.predict_fn(query_only=True), batches, task="next", exclude_history=exclude, item_block=5)
    assert got.shape == (5,)
    assert_ranks_agree(got, want, logits, np.asarray(target)[:5])
