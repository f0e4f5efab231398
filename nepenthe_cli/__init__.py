"""Hydra glue for ``train.py`` (the library ``nepenthe`` itself never imports Hydra)."""
