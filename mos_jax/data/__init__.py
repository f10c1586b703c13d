"""mos_jax.data: interaction logs -> sessions -> static [S, T] session grids, and the batch iterator.

See docs/data.md for formats and options, docs/interfaces.md for the batch contract.
"""

from mos_jax.data.config import DataConfig, SyntheticConfig
from mos_jax.data.iterator import make_iterator
from mos_jax.data.build import prepare_dataset
from mos_jax.data.prepared import PreparedDataset, load_prepared
from mos_jax.data.records import make_record_iterator
from mos_jax.data.readers import DataError

__all__ = ["DataConfig", "SyntheticConfig", "DataError", "PreparedDataset", "load_prepared", "make_iterator",
           "make_record_iterator", "prepare_dataset"]
