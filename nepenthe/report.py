"""Plain-text per-round table printed while a run progresses (and in the README)."""

from __future__ import annotations


def format_entropy(bits: float) -> str:
    """Exact zeros print as ``0``, so a zero-entropy unit is never confused with a small value rounded down."""
    if bits == 0.0:
        return "   0"
    if bits < 0.005:
        return "<.01"
    return f"{bits:4.2f}"


def format_table_header(unit_names: list[str]) -> str:
    legend = ", ".join(f"u{i}={name}" for i, name in enumerate(unit_names))
    cols = " ".join(f"{'u' + str(i):>4}" for i in range(len(unit_names)))
    return f"units: {legend}\nround sparsity  val%   test%   k/N  | entropy (bits): {cols}"


def format_round_row(record: dict, unit_names: list[str]) -> str:
    entropies = " ".join(format_entropy(record["entropy"][name]) for name in unit_names)
    depth = f"{record['k']}/{record['N']}"
    return (f"{record['round']:5d} {100 * record['sparsity']:7.2f}% {record['val_acc']:6.2f} {record['test_acc']:6.2f} "
            f"{depth:>5} |                 {entropies}")
