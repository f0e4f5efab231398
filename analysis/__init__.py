"""From run records to the paper's tables and figures: collect.py → tables.py / plots.py (see README)."""
