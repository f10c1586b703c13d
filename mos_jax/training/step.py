"""The pure train step: the NNX model is split once, and ``nnx.merge`` rebuilds it inside the compiled step.

Two compiled forms of the same step:

* ``jit_train_step``: ``jax.jit`` with donated state on a ``(data, expert)`` mesh (shardings come from the arguments;
  the state keeps its shardings through ``out_shardings``), traced under that mesh (``with_mesh``) so the models'
  expert-parallel hints (``models.expert_sharding``) apply.
* ``pmap_train_step``: ``jax.pmap`` over the ``data`` axis on replicated state. The weighted loss is summed across
  devices before dividing and the gradients are summed; the models compute their auxiliary-loss statistics (balance
  loss, z-loss, DSelect-k regularisers) over the global batch (``models.set_batch_axis``), so the loss and update
  equal the mesh path's for the same global batch (up to float summation order) without dropout. Capacity-routed
  MoE baselines (GShard, Expert Choice) still route each device's batch as one group under pmap.

Dropout masks come from the model's own RNG stream state (``TrainState.rest``), which is checkpointed. The pmap path
folds the device index into every RNG key for the step (``fold_rng_keys``), so devices draw independent masks, and
keeps the replicated keys unchanged (only the counts advance, identically on every device). With dropout > 0 the
mesh and pmap paths draw different, equally distributed masks: dropout masks are drawn per array, not per example,
so no key design makes a half-batch array's mask equal the corresponding rows of the whole batch's.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mos_jax.models import set_batch_axis
from mos_jax.training import losses

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
NextLoss = Callable[[jax.Array, jax.Array, Batch, jax.Array], jax.Array]  # losses.make_next_loss


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training (a pytree)."""

  step: jax.Array  # int32 scalar: optimizer updates done
  params: nnx.State  # nnx.Param variables
  rest: nnx.State  # every other variable (RNG stream keys and counts, ...)
  opt_state: optax.OptState


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, params, rest): the static structure and the two kinds of state."""
  return nnx.split(model, nnx.Param, ...)


def init_state(model: nnx.Module, tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, TrainState]:
  graphdef, params, rest = split_model(model)
  return graphdef, TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params))


def merge_model(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
  return nnx.merge(graphdef, state.params, state.rest)


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def fold_rng_keys(rest: nnx.State, index: jax.Array) -> nnx.State:
  """``rest`` with ``index`` folded into every RNG key (stacked key arrays key by key); other leaves unchanged."""

  def fold(x):
    if not _is_key(x):
      return x
    f = jax.random.fold_in
    for _ in range(x.ndim):
      f = jax.vmap(f, in_axes=(0, None))
    return f(x, index)

  return jax.tree.map(fold, rest)


def _forward(graphdef, params, rest, batch, axis: str | None = None, need_table: bool = False):
  """Model forward in training mode; returns the output and the advanced non-parameter state.

  ``axis`` (pmap): dropout keys get the device index folded in for this step (the returned state keeps the original
  keys), and the model's auxiliary statistics become the global batch's. ``need_table``: also return the item
  table (for the sampled / in-batch next-item losses), else None.
  """
  step_rest = rest if axis is None else fold_rng_keys(rest, jax.lax.axis_index(axis))
  # copy=True: fresh Variables at this trace level (under jax.grad), so the RNG counts may advance here.
  model = nnx.merge(graphdef, params, step_rest, copy=True)
  if axis is not None:
    set_batch_axis(model, axis)
  out = model(batch, deterministic=False)
  table = model.embedder.item_table if need_table else None  # a traced function of params: gradients flow
  _, _, new_rest = split_model(model)
  if axis is not None:
    new_rest = jax.tree.map(lambda old, new: old if _is_key(old) else new, rest, new_rest)
  return out, new_rest, table


def _per_example(out, table, batch, task: str, next_loss: NextLoss | None, step: jax.Array) -> jax.Array:
  """The task loss per example: the full cross-entropy on the logits, or the configured next-item loss."""
  if next_loss is None or task != "next":
    return losses.per_example_loss(out.logits, batch, task)
  if out.query is None:
    raise ValueError("train.next_loss needs the model's next-item query (ModelOutput.query); this model returns None")
  return next_loss(out.query, table, batch, step)


def _finish(state: TrainState, tx, schedule, grads, new_rest, metrics: Metrics) -> tuple[TrainState, Metrics]:
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=jnp.asarray(schedule(state.step), jnp.float32))
  return TrainState(step=state.step + 1, params=params, rest=new_rest, opt_state=opt_state), metrics


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, schedule: optax.Schedule, task: str,
                    next_loss: NextLoss | None = None) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """One optimizer update on one whole (global) batch; pure, not yet compiled.

  ``next_loss`` (``losses.make_next_loss``): the sampled / in-batch next-item loss; None = full softmax on the logits.
  """

  def objective(params, rest, batch, step):
    out, new_rest, table = _forward(graphdef, params, rest, batch, need_table=next_loss is not None)
    num, den = losses.weighted_sum_of(_per_example(out, table, batch, task, next_loss, step), batch)
    task_loss = losses.safe_div(num, den)
    loss = task_loss + out.aux_loss.astype(jnp.float32)
    return loss, (task_loss, out.aux_loss, dict(out.metrics), new_rest)

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    grad_fn = jax.value_and_grad(objective, has_aux=True)
    (loss, (task_loss, aux, routing, new_rest)), grads = grad_fn(state.params, state.rest, batch, state.step)
    metrics = {"loss": loss, "task_loss": task_loss, "aux_loss": jnp.asarray(aux, jnp.float32), **routing}
    return _finish(state, tx, schedule, grads, new_rest, metrics)

  return step


def make_pmap_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, schedule: optax.Schedule, task: str,
                   axis: str = "data", next_loss: NextLoss | None = None
                   ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The per-device body of the pmap path (runs under ``jax.pmap(..., axis_name=axis)``).

  A sampled next-item loss draws the same negatives on every device (same key); in-batch negatives are the device's
  own rows.
  """

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    den = jax.lax.psum(jnp.sum(batch["weight"].astype(jnp.float32)), axis)  # weight of the whole global batch

    def objective(params):
      out, new_rest, table = _forward(graphdef, params, state.rest, batch, axis, need_table=next_loss is not None)
      num, _ = losses.weighted_sum_of(_per_example(out, table, batch, task, next_loss, state.step), batch)
      # The aux loss is the global batch's on every device, with the gradient of this device's share only
      # (routing.batch_mean); so the summed gradients are exactly those of sum(w*l)/sum(w) + global aux loss.
      local = losses.safe_div(num, den) + out.aux_loss.astype(jnp.float32)
      return local, (num, out.aux_loss, dict(out.metrics), new_rest)

    (_, (num, aux, routing, new_rest)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    grads = jax.lax.psum(grads, axis)
    task_loss = losses.safe_div(jax.lax.psum(num, axis), den)
    aux = jax.lax.pmean(jnp.asarray(aux, jnp.float32), axis)
    metrics = {"loss": task_loss + aux, "task_loss": task_loss, "aux_loss": aux, **jax.lax.pmean(routing, axis)}
    return _finish(state, tx, schedule, grads, new_rest, metrics)

  return step


def with_mesh(fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """``fn`` traced under ``mesh``'s abstract mesh, so the models' expert-parallel hints (``models.expert_sharding``)
  see its ``expert`` axis.

  Set inside the traced function rather than around each call (``jax.set_mesh``): the compiled function carries it
  for every caller, ``.lower()`` included, and nothing global is changed.
  """

  def traced(*args):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args)

  return traced


def jit_train_step(step: Callable, state_shardings: Any, replicated: jax.sharding.NamedSharding) -> Callable:
  """``jax.jit`` with the state donated, traced under ``replicated``'s mesh (``with_mesh``); the state keeps its
  shardings on output, metrics are replicated."""
  return jax.jit(with_mesh(step, replicated.mesh), donate_argnums=0, out_shardings=(state_shardings, replicated))


def pmap_train_step(step: Callable, axis: str = "data", devices: list[jax.Device] | None = None) -> Callable:
  return jax.pmap(step, axis_name=axis, donate_argnums=0, devices=devices)


def replicate(tree: Any, devices: list[jax.Device]) -> Any:
  """Copies of ``tree`` stacked on a new leading device axis, one per device (input for the pmap path)."""
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(devices, ("data",)), jax.sharding.PartitionSpec("data"))
  return jax.tree.map(lambda x: jax.device_put(jnp.stack([x] * len(devices)), sharding), tree)


def unreplicate(tree: Any) -> Any:
  return jax.tree.map(lambda x: x[0], tree)


def split_for_devices(batch: dict[str, Any], n: int) -> dict[str, Any]:
  """``[B, ...]`` -> ``[n, B / n, ...]`` for the pmap path."""
  return {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}
