"""Copy a fine-tuned model folder into the package as a bundled model (weights + config + model card).

    python training/bundle_model.py data/recipe/model     # the recipe's model folder (training/recipe.py)
    python training/bundle_model.py data/recipe/runs/jsqa-s0 --eval data/recipe/eval-test-s0/metrics.json
    python training/bundle_model.py runs/jsqa-s0 runs/jsqa-s1 --eval eval-s0/metrics.json eval-s1/metrics.json

With several candidates, the one with the best validation PCC (from its config.json) is shipped: the test split
never chooses the model.

Only config.json, model.safetensors, metrics.json and a generated README.md card go into the package; absolute
paths in the provenance are rewritten relative to the repository so the shipped config names no local folders.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from jsqa_cli.hub import model_card
from jsqa_cli.model import (
    CARD_NAME,
    CONFIG_NAME,
    DEFAULT_MODEL,
    P835_HEADS,
    WEIGHTS_DIR,
    WEIGHTS_NAME,
    drop_heads,
    load_model,
    save_model,
)

REPO = Path(__file__).resolve().parents[1]

TRAINING_DATA = {
    "speech": "LibriSpeech slice (CC BY 4.0), LJSpeech (public domain), AN4 (CMU, BSD-style), IVR prompts "
    "'Allison' (CC BY-SA 3.0), espeak-ng/flite synthetic voices in English and, from the fourth fine-tuning "
    "phase on, espeak-ng voices in eight other languages; speaker-disjoint splits, language-disjoint for the "
    "other languages",
    "noise": "ambient recordings (Blanket app sounds: CC0 / CC BY / CC BY-SA / public domain), Speech Commands "
    "backgrounds (CC BY 4.0), SpeechBrain test noises and RIRs (Apache-2.0), ambient-engine (public "
    "domain / CC BY 4.0), NOISEX-92 (freely redistributable); no research-only or non-commercial material",
    "labels": "simulated MOS: wideband PESQ (P.862.2) calibrated to listener scales, E-model (G.107) for packet "
    "loss and echo; see docs/recipe-data.md",
}

P835_LABELS = (
    "P.835 sig and bak: the simulation's label of each clip without its added noise and its SNR, fused with "
    "DNSMOS P.835 SIG and BAK (C. K. A. Reddy, V. Gopal, R. Cutler, ICASSP 2022; Microsoft's models, CC BY 4.0, "
    "used to label training clips only); see docs/recipe-data.md"
)


BUNDLED_NOTE = """
## The bundled model and its limits

`{name}` ships inside the `jsqa` package: `jsqa score recordings/ -o scores.csv` uses it with no `--model`, offline.

- Its labels are **simulated**, not listening-test MOS: wideband PESQ (ITU-T P.862.2) mapped to a listener-like
  scale, with the E-model (ITU-T G.107) for packet loss and echo (`docs/recipe-data.md`). The "MOS" in the
  evaluation table above is that simulated label on held-out splits, not human ratings: the English split
  (`jsqa-simulated-main-test`, or `-mos-test` in older builds: unseen speakers, noise files and RIRs; about 72 %
  LibriSpeech, 12 % an Italian voice, 10 % AN4) and, where listed, the other languages' split
  (`jsqa-simulated-languages-test`: synthetic voices in two languages never heard in training, Italian and
  Polish); `jsqa-simulated-all` is both together.
- Training: {training}. See `docs/results.md` for the comparison with the same network trained from scratch and
  `docs/quality-checks.md` for its behaviour on degradation ladders, clean speech and real noisy recordings.
- Speech only, 16 kHz analysis (content above 8 kHz is not seen); scores of non-speech audio are meaningless.
- Mostly English training speech: clean speech in other languages scored 0.4-1.0 lower than English on synthetic
  voices (`docs/quality-checks.md`, by language); compare recordings of one language where you can.
"""


def _relative(value):
    """Absolute paths inside the repository → repository-relative strings (recursively)."""
    if isinstance(value, dict):
        return {k: _relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        p = Path(value)
        try:
            return str(p.resolve().relative_to(REPO))
        except ValueError:
            return p.name
    return value


def _own_metrics(path: Path, src: Path, dataset: str = "jsqa-simulated-mos-test") -> dict:
    """The rows of ``jsqa evaluate``'s metrics.json that belong to ``src`` (it may compare several models), with
    the dataset named so that a model card reader knows what it was measured on: ``dataset``, or with several
    test CSVs ``jsqa-simulated-<csv folder>-<stem>`` (and ``jsqa-simulated-all``)."""
    doc = json.loads(path.read_text())
    labels = [m["label"] for m in doc["models"] if Path(m["name"]).resolve() == src.resolve()]
    if not labels:
        raise SystemExit(f"{path}: no results for {src}")
    doc["models"] = [m for m in doc["models"] if m["label"] in labels]
    rows = [r for r in doc["metrics"] if r["model"] in labels]
    several = len({r["dataset"] for r in rows}) > 1
    doc["metrics"] = [
        {**r, "dataset": f"jsqa-simulated-{r['dataset'].replace('/', '-')}" if several else dataset} for r in rows
    ]
    return _relative(doc)


def _tuned(meta: dict) -> bool:
    """Whether ``meta`` is a fine-tuned (perhaps averaged) model's provenance, not a pretrained encoder's."""
    return "training" in meta and "init" in meta


def _chain(init: dict, seen: frozenset = frozenset()) -> list[dict]:
    """The provenance of each model a run started from, oldest first, read from their folders: the fine-tuned
    models of earlier cycles and, at the root, the pretrained encoder's (empty when its folder is gone, or seen
    already: a provenance that names itself ends the chain). Nothing for a run from scratch or from the bundled
    model a run continued (its card said how it was made: ``previous_training``)."""
    if init.get("kind") != "pretrained" or init.get("previous_training"):
        return []
    cfg = (REPO / str(init.get("model", "")) / CONFIG_NAME).resolve()
    m = json.loads(cfg.read_text()).get("metadata", {}) if cfg.is_file() and cfg not in seen else {}
    return [*_chain(m["init"], seen | {cfg}), m] if _tuned(m) else [m]


def _start(init: dict) -> str:
    """Where fine-tuning started: random weights, a JND-pretrained encoder, or (a later cycle) a fine-tuned model,
    described from its own provenance when its folder is still on disk (or, for the bundled model a run
    continued, from what its card said: ``previous_training``)."""
    chain = _chain(init)
    if chain and not _tuned(chain[0]):  # the root is a pretrained encoder
        m = chain[0]
        text = "; encoder pretrained on JND pairs" + (
            f" ({m['steps']} steps × {m['batch_size']} {m['pairing']} pairs, {m['negatives']} negatives)"
            if {"steps", "batch_size", "pairing", "negatives"} <= m.keys()
            else ""
        )
    else:
        root = chain[0]["init"] if chain else init
        text = (
            "; trained from scratch"
            if root.get("kind") != "pretrained"
            else f"; continued from the bundled model before it ({root['previous_training']})"
        )
    for m in filter(_tuned, chain):
        added = m.get("flatness_added")  # training/add_flatness.py: the same model, with new input channels
        text += _made(m) + (
            f"; then {added['bands']} spectral-flatness input bands added (zero weights)" if added else ""
        )
    return text


def _fine_tuned(meta: dict) -> str:
    """A model's fine-tuning from its metadata, or from one ``averaged_from`` entry (the same keys, flat)."""
    t, data = meta.get("training", meta), meta.get("data", meta)
    crop = t.get("crop_s")
    held = [{"encoder": "encoder", "mos": "MOS head"}.get(f, f) for f in t.get("freeze") or []]
    heads = t.get("heads") or []
    return (
        (f"; {', '.join(heads)} heads added, " if heads else "; ")
        + (f"{' and '.join(held)} held, " if held else "")
        + f"fine-tuned {t.get('steps', '?')} steps × {t.get('global_batch_size', '?')} crops"
        + (f" of {crop[0]:g}-{crop[1]:g} s" if crop else "")
        + f" on {data.get('train_files', '?')} simulated clips (best validation step {meta.get('best_step', '?')})"
    )


def _made(meta: dict) -> str:
    """What was done from the starting point: one fine-tuning run, or several whose weights were averaged."""
    parts = meta.get("averaged_from")  # training/average_models.py: runs from the same starting point
    if parts:
        return f"; then {len(parts)} runs from there, weights averaged: " + " | ".join(
            _fine_tuned(p).removeprefix("; ") for p in parts
        )
    return _fine_tuned(meta)


def _hardware(meta: dict) -> tuple[list[str], list[str]]:
    """What the chain's pretraining and its fine-tuning runs ran on, oldest first, as their provenance recorded it
    (``hardware``: runs made before it was recorded say nothing)."""
    chain = _chain(meta.get("init") or {})
    pre = [chain[0]["hardware"]] if chain and not _tuned(chain[0]) and chain[0].get("hardware") else []
    runs = [p for m in [*filter(_tuned, chain), meta] for p in m.get("averaged_from") or [m]]
    return pre, [hw for p in runs if (hw := p.get("training", p).get("hardware"))]


def _ran_on(meta: dict) -> str:
    """``encoder pretrained on …, fine-tuned on …`` (or ``trained on …`` when both ran on the same), from
    :func:`_hardware`; empty when nothing was recorded."""
    pre, fine = (" and ".join(dict.fromkeys(x)) for x in _hardware(meta))
    if pre and pre == fine:
        return f"trained on {pre}"
    return ", ".join([*([f"encoder pretrained on {pre}"] if pre else []), *([f"fine-tuned on {fine}"] if fine else [])])


def training_summary(meta: dict, where: str) -> str:
    """One sentence on how the model was made, from its provenance (and its starting point's, when on disk): what
    each run did, what it ran on when recorded, then ``where`` (a note of the caller's, e.g. the card's)."""
    text = f"`{meta.get('training', {}).get('preset', '?')}` preset" + _start(meta.get("init", {})) + _made(meta)
    return "; ".join(x for x in (text, _ran_on(meta), where) if x)


def _same_model(a: Path, b: Path) -> bool:
    """Whether folders ``a`` and ``b`` are one model: the same folder, or a copy of its weights (a released model
    kept as a recipe's starting point, e.g. small-continue.toml's ``init``)."""
    if a.resolve() == b.resolve():
        return True
    wa, wb = a / WEIGHTS_NAME, b / WEIGHTS_NAME
    return wa.is_file() and wb.is_file() and wa.read_bytes() == wb.read_bytes()


def write_model_folder(
    src: Path, dest: Path, name: str = DEFAULT_MODEL, eval_metrics: Path | None = None, where: str = "", recipe=None
) -> Path:
    """A complete model folder ``dest`` from the fine-tuned ``src``: config.json (provenance with repository-relative
    paths, ``name``, training data, licence and ``recipe``: how to remake it), model.safetensors, metrics.json
    (with ``eval_metrics``, ``jsqa evaluate``'s file) and a README.md card."""
    src, dest = Path(src), Path(dest)
    load_model(src)  # refuse to ship a folder that does not load
    dest.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / CONFIG_NAME).read_text())
    meta = _relative(config.get("metadata", {}))
    init = meta.get("init") or {}
    shipped = json.loads((dest / CONFIG_NAME).read_text()).get("metadata", {}) if (dest / CONFIG_NAME).is_file() else {}
    if (
        (shipped.get("init") or {}).get("previous_training")
        and (dest / WEIGHTS_NAME).is_file()
        and (dest / WEIGHTS_NAME).read_bytes() == (src / WEIGHTS_NAME).read_bytes()
    ):
        meta["init"] = shipped["init"]  # the same model bundled again: the model it replaced is the same too
    elif _same_model(REPO / str(init.get("model", "")), dest) and (dest / CARD_NAME).is_file():
        # continued from the model this replaces: keep how that one was made before its files are overwritten
        found = re.search(r"^- Training: (.*?)\. See `docs/results.md`", (dest / CARD_NAME).read_text(), re.M)
        meta["init"] = {
            **init,
            "model": f"{init['model']} (the bundled model it replaced)",
            "previous_training": found.group(1) if found else "its card did not say how it was made",
        }
    training_data = dict(TRAINING_DATA)
    if set(P835_HEADS) & set(config.get("extra_heads", [])):
        training_data["labels"] += "; " + P835_LABELS
    meta.update({"name": name, "training_data": training_data, "license": "mit", "recipe": recipe})
    aids = [h for h in config.get("extra_heads", []) if h not in P835_HEADS]
    if aids:  # training aids (teachers' scores): not shipped, the card and scores never name them
        slim = drop_heads(load_model(src))
        meta["dropped_heads"] = aids
        config["extra_heads"] = slim.config.extra_heads
        save_model(slim, dest)  # weights without the aids' heads; config.json is written next
    config["metadata"] = meta
    (dest / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    if src.resolve() != dest.resolve() and not aids:
        shutil.copyfile(src / WEIGHTS_NAME, dest / WEIGHTS_NAME)
    if eval_metrics is not None:
        (dest / "metrics.json").write_text(json.dumps(_own_metrics(Path(eval_metrics), src), indent=2) + "\n")
    elif (src / "metrics.json").is_file() and src.resolve() != dest.resolve():  # a model folder the recipe made
        shutil.copyfile(src / "metrics.json", dest / "metrics.json")
    card = model_card(dest, f"jsqa/{name}", license="mit")
    card.text += BUNDLED_NOTE.format(name=name, training=training_summary(meta, where))
    card.save(dest / CARD_NAME)
    load_model(dest)
    return dest


def bundle(
    src: Path, name: str = DEFAULT_MODEL, eval_metrics: Path | None = None, where: str = "", recipe=None
) -> Path:
    """Ship ``src`` inside the package (``WEIGHTS_DIR/name``): see :func:`write_model_folder`."""
    dest = write_model_folder(src, WEIGHTS_DIR / name, name, eval_metrics, where, recipe)
    load_model(name)  # the bundled copy resolves by name and loads
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", type=Path, nargs="+", help="fine-tuned model folder(s)")
    ap.add_argument("--name", default=DEFAULT_MODEL)
    ap.add_argument(
        "--eval", type=Path, nargs="*", default=None, help="metrics.json written by jsqa evaluate, one per model folder"
    )
    ap.add_argument(
        "--where",
        default="",
        help="a note for the card's training line; what each run ran on is read from its provenance, so this is for "
        "runs made before that was recorded (e.g. 'trained on CPU, 2 cores')",
    )
    args = ap.parse_args()
    if args.eval and len(args.eval) != len(args.models):
        ap.error("give one --eval file per model folder")
    pcc = [json.loads((m / CONFIG_NAME).read_text())["metadata"]["validation"]["pcc"] for m in args.models]
    best = max(range(len(pcc)), key=pcc.__getitem__)
    print(f"shipping {args.models[best]} (validation PCC {pcc[best]:.3f})")
    print(
        bundle(
            args.models[best],
            args.name,
            args.eval[best] if args.eval else None,
            args.where,
            json.loads((args.models[best] / CONFIG_NAME).read_text())["metadata"].get("recipe"),
        )
    )


if __name__ == "__main__":
    main()
