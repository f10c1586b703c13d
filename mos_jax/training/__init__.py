"""Training: Optax under jax.jit on a (data, expert) mesh or jax.pmap, Orbax checkpoints, the loop (docs/training.md).

Modules: ``config`` (TrainConfig), ``losses``, ``optimizer``, ``sharding``, ``step`` (pure train step), ``parallel``
(mesh / pmap executor), ``distributed`` (multi-process set-up and collectives), ``checkpoint``, ``metrics_log``,
``setup`` (dataset + model + state from a Config) and ``loop`` (``train(cfg)``). Only ``TrainConfig`` is imported
here: ``mos_jax.config`` needs it, and the loop needs ``mos_jax.config``.
"""

from mos_jax.training.config import TrainConfig

__all__ = ["TrainConfig"]
