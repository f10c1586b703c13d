"""Task heads: the CTR item/category biases (ModelConfig.ctr_bias) add exactly their table entries to the logit."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mos_jax.models import ModelConfig, build_model
from mos_jax.models.heads import history_match

S, T, V, NC, B = 2, 2, 7, 3, 5
CFG = ModelConfig(task="ctr", num_items=V, num_cats=NC, num_sessions=S, session_len=T, embed_dim=4, hidden_dim=4,
                  num_heads=1, head_hidden=4, dropout=0.0, num_themes=2, ctr_bias=True)
BATCH = dict(items=np.array([[[1, 2], [3, 0]]] * B, np.int32), cats=np.array([[[1, 2], [3, 0]]] * B, np.int32),
             target_item=np.array([1, 4, 4, 7, 2], np.int32), target_cat=np.array([1, 3, 3, 2, 0], np.int32),
             weight=np.ones(B, np.float32))


@pytest.mark.parametrize("name", ["backbone", "mos"])
def test_ctr_bias_adds_the_target_item_and_category_entries(name):
  model = build_model(dataclasses.replace(CFG, name=name), rngs=nnx.Rngs(0))
  base = np.asarray(model(BATCH, deterministic=True).logits)  # zero-initialised: the biases add nothing yet
  item_b = np.arange(V + 1, dtype=np.float32) / 4  # exact in float32
  cat_b = np.array([0.0, -1.0, 0.5, 2.0], np.float32)
  model.head.bias.item.embedding[...] = jnp.asarray(item_b[:, None])
  model.head.bias.cat.embedding[...] = jnp.asarray(cat_b[:, None])
  got = np.asarray(model(BATCH, deterministic=True).logits)
  want = base + item_b[BATCH["target_item"]] + cat_b[BATCH["target_cat"]]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_ctr_bias_gradient_counts_each_target_and_errors():
  model = build_model(dataclasses.replace(CFG, name="backbone"), rngs=nnx.Rngs(0))
  gdef, params, rest = nnx.split(model, nnx.Param, ...)
  grads = jax.grad(lambda p: jnp.sum(nnx.merge(gdef, p, rest)(BATCH, deterministic=True).logits))(params)
  # d(sum of logits) / d(bias of item i) = how often i is a target (item 4 twice, 3 / 5 / 6 never)
  np.testing.assert_array_equal(np.asarray(grads["head"]["bias"]["item"]["embedding"][...])[:, 0],
                                [0, 1, 1, 0, 2, 0, 0, 1])
  np.testing.assert_array_equal(np.asarray(grads["head"]["bias"]["cat"]["embedding"][...])[:, 0], [1, 1, 1, 2])
  with pytest.raises(ValueError, match="ctr_bias / history_match: the head needs the batch"):
    model.head.forward(jnp.zeros((B, 4)), jnp.zeros((B, 4)), model.embedder.item_table, deterministic=True)
  next_item = build_model(dataclasses.replace(CFG, name="backbone", task="next"), rngs=nnx.Rngs(0))
  assert next_item.head.bias is None  # CTR only
  with pytest.raises(ValueError, match="ModelConfig.ctr_bias=1: expected True or False"):
    dataclasses.replace(CFG, ctr_bias=1).validate()



def test_history_match_counts_the_target_item_and_category_in_the_history():
  # categories [[1, 2], [3, 0]] in every row
  got = np.asarray(history_match({**BATCH, "items": np.array([[[1, 2], [1, 0]]] * B, np.int32)}))
  n_item = [2, 0, 0, 0, 1]  # targets 1, 4, 4, 7, 2 in the history [[1, 2], [1, 0]]
  n_cat = [1, 1, 1, 1, 0]  # target categories 1, 3, 3, 2, 0 (0: unknown, never matched, not even padding)
  np.testing.assert_allclose(got, np.log1p(np.stack([n_item, n_cat], axis=1)), rtol=1e-6)
  assert np.asarray(history_match({k: v for k, v in BATCH.items() if k != "cats"}))[:, 1].tolist() == [0.0] * B


def test_history_match_feeds_the_ctr_head():
  model = build_model(dataclasses.replace(CFG, name="backbone", ctr_bias=False, history_match=True), rngs=nnx.Rngs(0))
  assert model.head.head.hidden.kernel.shape[0] == 3 * 4 + 2
  gdef, params, rest = nnx.split(model, nnx.Param, ...)
  grads = jax.grad(lambda p: jnp.sum(nnx.merge(gdef, p, rest)(BATCH, deterministic=True).logits))(params)
  assert np.abs(np.asarray(grads["head"]["head"]["hidden"]["kernel"][...])[-2:]).sum() > 0  # the features are used
