"""Configuration of the training loop (owned by ``mos_jax.training``)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class TrainConfig:
  """Optimiser, schedule, parallelism, validation, checkpointing and logging."""

  # Length of the run: num_steps wins when > 0, else num_epochs passes over the training split.
  batch_size: int = 64
  num_steps: int = 0
  num_epochs: float = 1.0
  # AdamW with linear warmup then decay to end_lr_ratio * learning_rate.
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  decay: str = "cosine"  # cosine | linear | constant
  end_lr_ratio: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  grad_clip_norm: float = 1.0  # global-norm clipping; 0 disables it
  weight_decay: float = 1e-4
  # Parameters whose path contains one of these names get no weight decay (biases, norms, embeddings).
  no_decay: tuple[str, ...] = ("bias", "scale", "embedding")
  # Next-item loss (evaluation always ranks every item): full = softmax over all items; sampled = sampled softmax over
  # num_sampled negatives shared by the batch, drawn with replacement from sampled_proposal (uniform, or popularity =
  # (training-target count + 1) ** sampled_alpha), log-Q corrected; in_batch = the batch's other targets as negatives,
  # log-Q corrected by their in-batch frequency. Negatives come from negatives_seed folded with the step.
  next_loss: str = "full"
  num_sampled: int = 1024
  sampled_proposal: str = "uniform"
  sampled_alpha: float = 0.75
  negatives_seed: int = 0
  # Parallelism: 'mesh' = jax.jit on a (data, expert) device mesh; 'pmap' = jax.pmap data parallelism.
  parallelism: str = "mesh"
  mesh_data: int = -1  # devices on the data axis; -1 = all devices / mesh_expert
  mesh_expert: int = 1  # devices on the expert axis (stacked expert parameters are split over it)
  mesh_model: int = 1  # devices on the model axis (embedding rows, with embedding_sharding='model')
  # Multi-process training (training/distributed.py): off = one process; auto = jax.distributed.initialize() from the
  # cluster's environment (TPU pods, GPU clusters, SLURM); explicit = from the three fields below (CPU hosts, tests).
  # train.py initialises it before JAX starts; the mesh spans every process's devices, each process loads its slice
  # of every global batch, and process 0 alone writes logs and JSON. Needs parallelism='mesh'.
  distributed: str = "off"
  coordinator_address: str = ""  # explicit: host:port where process 0 runs the coordinator
  num_processes: int = 1  # explicit: how many processes take part
  process_id: int = 0  # explicit: this process's index in [0, num_processes)
  # Rows of the item / category tables split over the 'data' or 'model' mesh axis ('none' = replicated); the row
  # count must divide by the axis size: see model.embedding_rows_multiple.
  embedding_sharding: str = "none"
  # Validation and early stopping.
  eval_every: int = 500  # steps; 0 = only at the end
  eval_batch_size: int = 256
  eval_split: str = "valid"
  eval_exclude_history: bool = False  # next-item: drop history items from the candidates (see docs/metrics.md)
  eval_item_block: int = 0  # next-item: rank against the item table in blocks of this many items (0 = all at once)
  early_stop_metric: str = "auto"  # auto = auc (ctr) or ndcg@10 (next); any key evaluate() returns
  early_stop_mode: str = "auto"  # max | min | auto (min for loss-like metrics, else max)
  patience: int = 0  # evaluations without improvement before stopping; 0 = never stop early
  # Checkpoints in WORKDIR/checkpoints/{latest,best}.
  checkpoint_every: int = 500  # steps (0 = none on the way); also written at the end and on SIGTERM/SIGINT
  keep: int = 2  # latest checkpoints kept (the best one is kept separately)
  async_checkpoints: bool = True
  # A resume whose schedule or optimizer fields (checkpoint.SCHEDULE_FIELDS) differ from the checkpoint's is refused
  # unless this is true; the run then continues on the new schedule from the restored step and optimizer state.
  allow_schedule_change: bool = False
  # Logging.
  log_every: int = 50  # steps between metrics.jsonl / TensorBoard records
  progress_bar: bool = True  # shown only when stderr is a terminal
