"""Plot training curves from runs' metrics.jsonl files (needs matplotlib: pip install 'jsqa[plot]').

    python training/plot_curves.py data/recipe/runs/pretrain -o docs/img/pretraining.png
    python training/plot_curves.py data/recipe/runs/scratch-s0 data/recipe/runs/jsqa-s0 --finetune \
        -o docs/img/finetuning.png

Pretraining runs: NT-Xent loss, validation retrieval top-1, JND margin and SNR rank. Fine-tuning runs (their
metrics.jsonl is under MODEL/training/): training loss and validation PCC / RMSE, one line per run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jsqa_cli.train import read_metrics


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot(runs: list[Path], out: Path, finetune: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["loss", "val_pcc", "val_rmse"] if finetune else ["loss", "val_top1", "jnd_margin", "snr_rank"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for run in runs:
        records = read_metrics(run / "training" if (run / "training" / "metrics.jsonl").exists() else run)
        for ax, key in zip(axes, keys):
            x, y = _series(records, key)
            ax.plot(x, y, marker="o" if key != "loss" else None, ms=3, label=run.name)
            ax.set_title(key)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    if len(runs) > 1:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--finetune", action="store_true", help="fine-tuning runs (loss, val PCC, val RMSE)")
    args = ap.parse_args()
    print(plot(args.runs, args.out, args.finetune))


if __name__ == "__main__":
    main()
