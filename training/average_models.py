"""Average the weights of fine-tuned models of one network: a uniform "model soup" (Wortsman et al., 2022).

    python training/average_models.py runs/jsqa-more-crop4-s1 runs/jsqa-more-crop2-s1 -o runs/jsqa-more-s1 \
        --val data/recipe/mos/val.csv

Averaging works for runs that share a starting point (e.g. two continuations of one fine-tuned model with other
crop lengths): they stay in one basin, and the average often validates as well as the best of them while
inheriting some robustness of each (docs/results.md, fourth version). Runs from different starting points do
not average well.

The output is a normal model folder (config.json + model.safetensors). Its metadata is the first model's, plus
``averaged_from`` (each part's folder, main training options, best step and validation PCC) and, with ``--val``, the
average's own ``validation`` metrics, computed as fine-tuning computes them, so that ``bundle_model.py`` can
compare it with single runs. Without ``--val`` the copied validation metrics are removed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from jsqa_cli.model import load_model, read_config, save_model


def average_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors; other tensors (integer buffers) from the first state."""
    keys = list(states[0])
    for i, s in enumerate(states[1:], 1):
        if list(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise ValueError(f"model {i + 1} has other tensors than model 1: not the same network")
    return {k: torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype)
            if states[0][k].is_floating_point() else states[0][k].clone() for k in keys}


def validation_of(model, val_csv: str | Path) -> dict:
    """Validation metrics of a loaded model on a labelled CSV, computed as fine-tuning records them."""
    from jsqa_cli.finetune import decode_all, read_labelled_csv, validate

    val = read_labelled_csv(val_csv)
    metrics, _ = validate(model, list(decode_all(list(val["path"]))), val["mos"].to_numpy(float), val["condition"])
    return metrics


def _part(folder, meta: dict) -> dict:
    """What the model card says about one averaged model: its folder, main training options, best step."""
    t = meta.get("training", {})
    return {"model": str(folder), **{k: t[k] for k in ("steps", "global_batch_size", "crop_s", "lr_encoder",
                                                       "lr_head", "seed") if k in t},
            "train_files": meta.get("data", {}).get("train_files"), "best_step": meta.get("best_step"),
            "validation_pcc": meta.get("validation", {}).get("pcc")}


def average_models(folders: list[str | Path], out: str | Path, val_csv: str | Path | None = None) -> Path:
    """Average the models in ``folders`` into the model folder ``out``; see the module docstring."""
    if len(folders) < 2:
        raise ValueError("give at least two model folders to average")
    configs = [read_config(f) for f in folders]
    for f, (cfg, _) in zip(folders[1:], configs[1:]):
        if cfg != configs[0][0]:
            raise ValueError(f"{f}: another network than {folders[0]} (config.json differs)")
    models = [load_model(f) for f in folders]
    soup = models[0]
    soup.load_state_dict(average_state([m.state_dict() for m in models]))
    meta = dict(configs[0][1])
    meta["averaged_from"] = [_part(f, m) for f, (_, m) in zip(folders, configs)]
    meta.pop("validation", None)
    for key in ("best_step", "steps_run", "early_stopped"):  # of one part, not of the average
        meta.pop(key, None)
    soup.metadata = {}
    if val_csv is not None:
        meta["validation"] = validation_of(soup, val_csv)
    return save_model(soup, out, meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="fine-tuned model folders of one network")
    ap.add_argument("-o", "--out", required=True, help="model folder to write")
    ap.add_argument("--val", help="labelled CSV: validate the average and record its metrics")
    args = ap.parse_args()
    try:
        folder = average_models(args.models, args.out, args.val)
    except (ValueError, OSError) as e:
        raise SystemExit(f"Error: {e}") from None
    print(f"{folder}: average of {len(args.models)} models")


if __name__ == "__main__":
    main()
