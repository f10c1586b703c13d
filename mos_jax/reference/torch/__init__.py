"""PyTorch reference of mos_jax's models (docs/reference_torch.md): plain SASRec / GRU4Rec backbones, MoS with
SASRec (or GRU4Rec) experts and GShard top-2, as ``nn.Module``s whose ``state_dict`` maps one to one onto the JAX
parameters (``mos_jax.reference.names``; ``python -m mos_jax.convert``). Needs ``pip install .[torch]``.
"""

try:
  import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
  raise ImportError("mos_jax.reference.torch needs PyTorch: pip install -r requirements-torch.txt "
                    "(or pip install '.[torch]')") from e

from mos_jax.reference.torch.encoders import GRU4Rec, SASRec, build_encoder  # noqa: E402
from mos_jax.reference.torch.models import (BackboneModel, GShard, ModelOutput, MoS, build_model,  # noqa: E402
                                            check_supported)
from mos_jax.reference.torch.training import make_optimizer, total_loss, train_step  # noqa: E402

__all__ = ["BackboneModel", "GRU4Rec", "GShard", "ModelOutput", "MoS", "SASRec", "build_encoder", "build_model",
           "check_supported", "make_optimizer", "total_loss", "train_step"]
