"""setup.init_model_state: the jitted initialisation gives the eager one's graph, tree, dtypes and values (to float32
rounding: XLA may fuse an initializer's scale into its sampling, which moves some values by one ulp)."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from mos_jax.models import build_model
from mos_jax.models.config import ModelConfig
from mos_jax.training import step as step_lib
from mos_jax.training.setup import init_model_state


@pytest.mark.parametrize("name,backbone", [("mos", "sasrec"), ("gshard", "gru4rec"), ("backbone", "sdim"),
                                           ("backbone", "mamba4rec")])
def test_jitted_init_equals_eager(name, backbone):
  cfg = ModelConfig(name=name, backbone=backbone, task="ctr", num_items=30, num_cats=5, num_sessions=3,
                    session_len=4, embed_dim=8, hidden_dim=8, num_heads=2, num_themes=2, dropout=0.1).validate()
  tx = optax.adamw(1e-3)
  graphdef, state = init_model_state(cfg, 3, tx)
  want_graphdef, want = step_lib.init_state(build_model(cfg, rngs=nnx.Rngs(3)), tx)
  assert graphdef == want_graphdef
  got_leaves, got_tree = jax.tree.flatten(state)
  want_leaves, want_tree = jax.tree.flatten(want)
  assert got_tree == want_tree
  for g, w in zip(got_leaves, want_leaves):
    if jax.dtypes.issubdtype(w.dtype, jax.dtypes.prng_key):
      g, w = jax.random.key_data(g), jax.random.key_data(w)
    assert g.dtype == w.dtype and g.shape == w.shape
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=3e-7, atol=1e-7)
