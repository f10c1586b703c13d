"""SASRec backbone on MovieLens-100k under RecBole 1.2.1's sequential-recommendation defaults (docs/protocol.md).

Every rating is an interaction, sorted by time; leave-one-out (last -> test, second-to-last -> valid, every earlier
prefix with >= 1 history item -> a training target); history = the 50 most recent items, flat (chunk_len = 1, S = 50,
T = 1); full ranking over all items, history not masked; CE over all items; Adam lr 1e-3, batch 2048, early stopping
on valid NDCG@10 with patience 10, validated once per epoch. ``num_epochs`` is capped for 2-core CPU runs (RecBole:
up to 300). The SASRec options in ``model.sasrec`` select RecBole's architecture and init.
"""

import pathlib

from mos_jax.config import Config

DATA_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"
MAX_ITEM_LIST_LENGTH = 50
STEPS_PER_EPOCH = 47  # floor(97,171 training targets / 2048): drop_remainder batches of one epoch


def get_config() -> Config:
  cfg = Config(workdir="runs/ml100k_sasrec", seed=0)
  d = cfg.data
  d.dataset = "ml-100k"
  d.data_dir = str(DATA_DIR)
  d.task = "next"
  d.session_mode = "chunk"  # one item per "session": the [S, T] grid is the flat list of the last S items
  d.chunk_len = 1
  d.num_sessions = MAX_ITEM_LIST_LENGTH
  d.session_len = 1
  d.max_train_targets_per_user = 0  # 0 = every earlier prefix is a training target
  d.min_user_events = 3  # test + valid + one training target; every ml-100k user has >= 20 ratings anyway
  d.kcore = 0
  m = cfg.model
  m.name = "backbone"
  m.backbone = "sasrec"
  m.use_category = False  # RecBole's SASRec embeds the item id only
  m.embed_dim = 64  # hidden_size
  m.hidden_dim = 64
  m.num_layers = 2  # n_layers
  m.num_heads = 2  # n_heads
  m.ffn_multiplier = 4  # inner_size 256 = 4 * 64
  m.dropout = 0.5  # hidden_dropout_prob
  s = m.sasrec
  s.norm = "post"
  s.input_norm = True
  s.final_norm = False
  s.out_proj = False
  s.positions = "oldest"
  s.activation = "gelu"  # exact (erf) GELU
  s.layer_norm_eps = 1e-12
  s.init_std = 0.02  # initializer_range
  s.attn_dropout = 0.5  # attn_dropout_prob
  t = cfg.train
  t.batch_size = 2048  # train_batch_size
  t.num_epochs = 40.0  # cap for the 2-core CPU budget (RecBole: epochs 300)
  t.learning_rate = 1e-3
  t.warmup_steps = 0
  t.decay = "constant"
  t.grad_clip_norm = 0.0  # RecBole: clip_grad_norm None
  t.weight_decay = 0.0
  t.eval_every = STEPS_PER_EPOCH  # eval_step 1
  t.eval_batch_size = 1024
  t.eval_exclude_history = False
  t.early_stop_metric = "ndcg@10"  # valid_metric NDCG@10
  t.patience = 10  # stopping_step
  t.checkpoint_every = 5 * STEPS_PER_EPOCH
  t.log_every = STEPS_PER_EPOCH
  return cfg
