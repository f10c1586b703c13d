"""Backbone encoders behind one interface (see ``base``); importing this package registers the built-in hosts."""

from mos_jax.models.encoders.base import (Encoder, apply_stacked_encoders, build_encoder, build_stacked_encoders,
                                          encoder_names, register_encoder)
from mos_jax.models.encoders.din import DIN
from mos_jax.models.encoders.gru4rec import GRU4Rec
from mos_jax.models.encoders.mamba4rec import Mamba4Rec
from mos_jax.models.encoders.sasrec import SASRec
from mos_jax.models.encoders.sdim import SDIM
from mos_jax.models.encoders.transact import TransAct
from mos_jax.models.encoders.twin import TWIN

__all__ = ["DIN", "Encoder", "GRU4Rec", "Mamba4Rec", "SASRec", "SDIM", "TWIN", "TransAct", "apply_stacked_encoders",
           "build_encoder", "build_stacked_encoders", "encoder_names", "register_encoder"]
