"""Command-line entry points: ``mos-train`` / ``python train.py`` (cli.train), ``mos-eval`` / ``python eval.py``
(cli.eval). The repo-root scripts are thin wrappers around these modules."""
