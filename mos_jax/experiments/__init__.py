"""Experiment runners built on train.py / eval.py (``python -m mos_jax.experiments.sweep``)."""
