"""mos_jax: Mixture of Sequence (MoS) for long-sequence recommendation, in JAX/Flax NNX.

Data flows one way: ``mos_jax.data`` -> ``mos_jax.models`` -> ``mos_jax.training`` -> ``mos_jax.evaluation``.
"""

__version__ = "0.1.0"
