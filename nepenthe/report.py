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


def format_collapse(section: dict, uncollapsed_test_acc: float) -> list[str]:
    """Lines describing a collapse section of a summary (``Experiment.collapse_and_measure``)."""
    before, after = section["before"], section["after"]
    depth = "weight_layers_on_longest_path"
    lines = [
        f"collapsed (merge={section['merge']}): weight layers on the longest path {before[depth]} -> {after[depth]}, "
        f"MACs {before['macs'] / 1e6:.2f} M -> {after['macs'] / 1e6:.2f} M, params {before['params']:,} -> "
        f"{after['params']:,}",
        f"  test top-1 {section['test_acc']:.2f}% collapsed vs {uncollapsed_test_acc:.2f}% uncollapsed; max |output "
        f"diff| {section['max_abs_diff']:.2g} vs linearized (exact steps), {section['diff_vs_original']:.2g} vs "
        f"uncollapsed (output scale {section['output_scale']:.3g})",
    ]
    latency = section.get("latency_ms", {})
    if latency:
        parts = []
        for key, ms in latency["uncollapsed"].items():
            small = latency["collapsed"][key]
            parts.append(f"{key.replace('_', ' ')}: {ms:.3f} -> {small:.3f} ms ({ms / small:.2f}x)")
        lines.append(f"  latency on {section.get('latency_device', '?')} ({section.get('latency_threads')} threads): "
                     + "; ".join(parts))
    if section.get("file"):
        lines.append(f"  saved {section['file']} (load with torch.export.load(path).module())")
    return lines
