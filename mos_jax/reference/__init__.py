"""Reference implementations of mos_jax models in other frameworks (docs/reference_torch.md).

``mos_jax.reference.names`` (the parameter-name mapping, numpy only) imports nothing beyond numpy;
``mos_jax.reference.torch`` needs PyTorch (``pip install .[torch]``). The library itself never imports either.
"""
