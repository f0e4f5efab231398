"""Pruning: pure budget allocation, mask bookkeeping, and one small class per method."""
