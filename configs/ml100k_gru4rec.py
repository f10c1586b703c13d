"""GRU4Rec backbone on MovieLens-100k under RecBole 1.2.1's sequential-recommendation defaults (docs/protocol.md).

Data, split, evaluation and training as ``ml100k_sasrec.py``. RecBole GRU4Rec: embedding_size 64, hidden_size 128,
one layer, dropout 0.3 on the input embeddings, no GRU biases, Xavier-uniform GRU kernels, a dense layer hidden ->
embedding (here the next-item head's projection), scores tied to the item embedding.
"""

import pathlib

from mos_jax.config import Config, load_config_file


def get_config() -> Config:
  cfg = load_config_file(pathlib.Path(__file__).with_name("ml100k_sasrec.py"))
  cfg.workdir = "runs/ml100k_gru4rec"
  m = cfg.model
  m.backbone = "gru4rec"
  m.embed_dim = 64  # embedding_size
  m.hidden_dim = 128  # hidden_size
  m.num_layers = 1
  m.dropout = 0.3  # dropout_prob
  m.gru4rec.bias = False
  m.gru4rec.init = "xavier"
  return cfg
