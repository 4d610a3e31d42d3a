#!/usr/bin/env python3
"""Plots svdq_quality's CSV: mean relative output MSE per method, per format, for the synthetic
and the real layers (log scale). Runs in tools/.venv (matplotlib): python3 tools/minilm.py setup.

    tools/.venv/bin/python tools/plot_quality.py QUALITY.csv OUT.png
"""
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(csv_path: str, png_path: str) -> None:
    acc = defaultdict(list)  # (source, format, method) -> rel_mse values
    methods = []
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            source = "synthetic" if row["layer"].startswith("synth-") else "real (MiniLM)"
            acc[(source, row["format"], row["method"])].append(float(row["rel_mse"]))
            if row["method"] not in methods:
                methods.append(row["method"])
    sources = [s for s in ("synthetic", "real (MiniLM)") if any(k[0] == s for k in acc)]
    formats = [f for f in ("int4", "nvfp4") if any(k[1] == f for k in acc)]
    fig, axes = plt.subplots(1, len(sources), figsize=(6.5 * len(sources), 4.5), squeeze=False)
    width = 0.8 / max(1, len(formats))
    for ax, source in zip(axes[0], sources):
        for i, fmt in enumerate(formats):
            xs, ys = [], []
            for j, m in enumerate(methods):
                v = acc.get((source, fmt, m))
                if v:
                    xs.append(j + (i - (len(formats) - 1) / 2) * width)
                    ys.append(sum(v) / len(v))
            if ys:  # a format not measured on this source gets no (empty) legend entry
                ax.bar(xs, ys, width=width, label=fmt, color=f"C{i}")
        ax.set_yscale("log")
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=45, ha="right")
        ax.set_ylabel("mean relative output MSE (log)")
        ax.set_title(f"{source} layers, rank 32")
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    print(f"wrote {png_path}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
