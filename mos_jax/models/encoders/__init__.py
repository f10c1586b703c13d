"""Backbone encoders behind one interface (see ``base``); importing this package registers the built-in hosts."""

from mos_jax.models.encoders.base import (Encoder, apply_stacked_encoders, build_encoder, build_stacked_encoders,
                                          encoder_names, register_encoder)
from mos_jax.models.encoders.gru4rec import GRU4Rec
from mos_jax.models.encoders.sasrec import SASRec

__all__ = ["Encoder", "GRU4Rec", "SASRec", "apply_stacked_encoders", "build_encoder", "build_stacked_encoders",
           "encoder_names", "register_encoder"]
