"""The recipe: from the shared data folder to a complete model folder, in named stages, every number in a config.

    python training/recipe.py --config training/configs/smoke.toml --out /tmp/smoke     # minutes, tiny sizes
    python training/recipe.py --config training/configs/small.toml --out data/recipe    # the shipped CPU model
    python training/recipe.py --config training/configs/small.toml --out data/recipe --stages evaluate,checks

Stages, in order (a stage runs when the config has its table):

    sources    speaker-, noise- and RIR-disjoint splits of the data folder   prepare_sources.main
    languages  espeak-ng voices in other languages (needs espeak-ng)           multilingual_voices.main
    corpus     simulated-MOS draws, one per [corpus.NAME] table              simulate_mos.main
    labels     teachers' scores and P.835 sig/bak for the draws it names      teachers.label_files, p835_labels
    pairs      JND pairs from the training split                              jsqa_cli.pairs.make_pairs
    pretrain   the contrastive encoder                                        jsqa_cli.pretrain.pretrain
    finetune   fine-tuning phases, each from the one before                   jsqa_cli.finetune.finetune
    evaluate   the final model on the held-out test splits                    jsqa_cli.evaluate.evaluate
    checks     the quality bar (ladders, NOIZEUS, clean speech)               quality_checks.main
    bundle     OUT/model: config.json + model.safetensors + card README.md    bundle_model.write_model_folder
    ablation   pretraining modes and scratch compared by fine-tuning          the same functions + ablation_report

Each table of the config is passed through as keyword arguments (library functions) or as options (the
training/ scripts' ``main(argv)``): the keys are the functions' own names. The few keys the recipe reads itself
(which corpus draws to train on, which checks are advisory ...) are listed in docs/recipe-data.md.

Every unit of work (a stage, or one draw / phase / run of it) writes ``.done.json`` into its folder last, holding
a hash of its config table and of its inputs' hashes; a unit whose hash matches is skipped, anything else in its
folder is removed and the unit runs again (a pretraining or fine-tuning run killed with the same hash goes on
from its last checkpoint). So a killed recipe resumes where it stopped, and a changed number reruns what depends
on it. Wall times go to OUT/timings.tsv.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

TRAINING = Path(__file__).resolve().parent
REPO = TRAINING.parent
sys.path.insert(0, str(TRAINING))

STAGES = (
    "sources",
    "languages",
    "corpus",
    "labels",
    "pairs",
    "pretrain",
    "finetune",
    "evaluate",
    "checks",
    "bundle",
    "ablation",
)
DONE = ".done.json"
STARTED = ".started.json"


class RecipeError(Exception):
    """A stage that failed, or a quality check: printed as one line, exit status 1."""


class ConfigError(RecipeError):
    """A config (or command line) that cannot be run: printed as one line, exit status 2."""


# ------------------------------------------------------------------------------------------------ plumbing


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_hash(section, inputs: list[str]) -> str:
    return sha256_hex(json.dumps({"section": section, "inputs": inputs}, sort_keys=True, default=str).encode())


def as_argv(table: dict, positional: tuple = ()) -> list[str]:
    """A config table as command-line options of a training/ script: ``key = v`` → ``--key v`` (underscores as
    hyphens), a list → several values, ``true`` → the bare flag, ``false`` → left out."""
    argv = [str(p) for p in positional]
    for key, value in table.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        elif isinstance(value, dict):
            argv += [flag, ",".join(f"{k}={v}" for k, v in value.items())]
        else:
            argv += [flag, str(value)]
    return argv


def call_script(main: Callable, argv: list[str], what: str):
    """A training/ script's ``main(argv)``; its argparse errors become one RecipeError line."""
    try:
        return main(argv)
    except SystemExit as e:
        if e.code not in (0, None):
            raise RecipeError(f"{what} stopped (exit {e.code}; its message is above)") from None
        return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], check=False, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@dataclass
class Unit:
    """One piece of work: its folder, the config it depends on and the units whose outputs it reads."""

    stage: str
    name: str  # e.g. "corpus/main"
    folder: Path
    section: object
    inputs: list[Unit]
    run: Callable[[bool], None]  # run(resume): resume is True when a killed run of the same hash left a checkpoint
    checkpoint: str | None = None  # where that checkpoint is, inside the folder (draws, labels, training runs)
    hash: str = field(init=False)

    def __post_init__(self):
        self.hash = content_hash(self.section, [u.hash for u in self.inputs])

    def done(self) -> bool:
        try:
            return json.loads((self.folder / DONE).read_text()).get("hash") == self.hash
        except (OSError, ValueError):
            return False

    def resumable(self) -> bool:
        try:
            started = json.loads((self.folder / STARTED).read_text()).get("hash") == self.hash
        except (OSError, ValueError):
            return False
        return started and self.checkpoint is not None and (self.folder / self.checkpoint).is_file()


# ------------------------------------------------------------------------------------------------ the plan


def table(config: dict, name: str) -> dict:
    return copy.deepcopy(config.get(name) or {})


def plan(config: dict, out: Path, config_path: Path) -> list[Unit]:
    """Every unit of the config's stages, in order, each with its hash (computed from the config alone)."""
    import ablation_report
    import bundle_model
    import multilingual_voices
    import p835_labels
    import prepare_sources
    import quality_checks
    import simulate_mos

    from jsqa_cli.evaluate import evaluate, load_eval_data
    from jsqa_cli.finetune import TRAINING_DIR, finetune
    from jsqa_cli.pairs import make_pairs
    from jsqa_cli.pretrain import pretrain

    units: list[Unit] = []
    by_name: dict[str, Unit] = {}

    def add(stage, name, folder, section, inputs, run, checkpoint=None) -> Unit:
        unit = Unit(stage, name, folder, section, [i for i in inputs if i is not None], run, checkpoint)
        units.append(unit)
        by_name[name] = unit
        return unit

    # sources ---------------------------------------------------------------------------------------------
    sources_cfg = table(config, "sources")  # data_root: relative to the repository root (hashed as written)
    data_root = (REPO / sources_cfg.get("data_root", "../shared/data")).resolve()
    src_dir = out / "sources"
    sources = add(
        "sources",
        "sources",
        src_dir,
        sources_cfg,
        [],
        lambda resume: call_script(
            prepare_sources.main,
            as_argv({**sources_cfg, "data_root": str(data_root), "out": str(src_dir)}),
            "prepare_sources.py",
        ),
    )

    # languages -------------------------------------------------------------------------------------------
    lang_dir, languages = out / "languages", None
    if "languages" in config:
        lang_cfg = table(config, "languages")
        languages = add(
            "languages",
            "languages",
            lang_dir,
            lang_cfg,
            [sources],
            lambda resume: call_script(
                multilingual_voices.main,
                as_argv({**lang_cfg, "sources": str(src_dir), "out": str(lang_dir)}),
                "multilingual_voices.py",
            ),
        )

    # corpus: one simulated-MOS draw per [corpus.NAME] table ----------------------------------------------
    draws: dict[str, Unit] = {}
    for name, draw in table(config, "corpus").items():
        from_languages = draw.pop("sources", "sources") == "languages"
        if from_languages and languages is None:
            raise ConfigError(f"[corpus.{name}] draws from `languages`, but the config has no [languages] table")
        folder = out / "corpus" / name
        argv = as_argv({**draw, "sources": str(lang_dir if from_languages else src_dir), "out": str(folder)})
        draws[name] = add(
            "corpus",
            f"corpus/{name}",
            folder,
            {"sources": from_languages, **draw},
            [languages if from_languages else sources],
            lambda resume, argv=argv: call_script(simulate_mos.main, argv + ["--resume"] * resume, "simulate_mos.py"),
            checkpoint=simulate_mos.JOURNAL,  # a killed draw goes on after its last finished batch
        )

    # labels: teachers' scores and P.835 sig/bak beside the simulation's MOS, for the draws [labels] names ----
    labelled: dict[str, Unit] = {}
    if "labels" in config:
        lab = table(config, "labels")
        names = lab.pop("draws", [])
        missing = [n for n in names if n not in draws]
        if not names or missing:
            raise ConfigError(
                f"[labels] draws: {'no draw named' if not names else 'not in [corpus]: ' + ', '.join(missing)}"
            )
        for name in names:
            folder = out / "labels" / name
            labelled[name] = add(
                "labels",
                f"labels/{name}",
                folder,
                lab,
                [draws[name]],
                lambda resume, name=name, folder=folder: p835_labels.label_draw(out / "corpus" / name, folder, **lab),
                checkpoint="train_teachers.csv",  # teachers.py appends: a killed run goes on where it stopped
            )

    def csvs(names: list[str], split: str, where: str) -> tuple[list[str], list[Unit]]:
        """The split's CSV of each named draw: its labelled copy (labels/NAME) when [labels] names it."""
        missing = [n for n in names if n not in draws]
        if missing:
            raise ConfigError(f"{where} names corpus draw(s) {', '.join(missing)}, not in the config's [corpus]")
        paths = [str(out / ("labels" if n in labelled else "corpus") / n / f"{split}.csv") for n in names]
        return paths, [labelled.get(n, draws[n]) for n in names]

    # pairs -----------------------------------------------------------------------------------------------
    pairs_cfg = table(config, "pairs")
    speech, noise = [str(src_dir / "speech_train.txt")], [str(src_dir / "noise_train.txt")]

    def pairs_unit(name: str, folder: Path, cfg: dict) -> Unit:
        return add(
            "pairs" if name == "pairs" else "ablation",
            name,
            folder,
            cfg,
            [sources],
            lambda resume: make_pairs(speech, noise, folder, **cfg),
        )

    pairs = pairs_unit("pairs", out / "pairs", pairs_cfg) if "pairs" in config else None

    # pretrain --------------------------------------------------------------------------------------------
    def pretrain_unit(name: str, folder: Path, cfg: dict, pairs_in: Unit) -> Unit:
        model = cfg.pop("model", None)  # architecture: preset overrides, e.g. flatness_bands

        def run(resume: bool):
            if model:
                (folder / "model-config.json").write_text(json.dumps(model, indent=1))
                cfg["config_file"] = str(folder / "model-config.json")
            pretrain(pairs=str(pairs_in.folder), output=str(folder), resume=resume, **cfg)

        return add(
            "pretrain" if name == "pretrain" else "ablation",
            name,
            folder,
            {**cfg, "model": model},
            [pairs_in],
            run,
            checkpoint="checkpoint.pt",
        )

    encoder = None
    if "pretrain" in config:
        if pairs is None:
            raise ConfigError("[pretrain] needs a [pairs] table")
        encoder = pretrain_unit("pretrain", out / "pretrain", table(config, "pretrain"), pairs)

    # finetune: phases, each starting from the one before -------------------------------------------------
    def finetune_unit(
        stage: str, name: str, folder: Path, cfg: dict, start: Unit | None, init: Path | None, where: str
    ) -> Unit:
        """A fine-tuning run from ``init`` (a pretrained encoder or the previous phase's model, made by
        ``start``); with ``from_scratch`` only init's architecture is used."""
        train, train_in = csvs(cfg.pop("train", []), "train", where)
        val, val_in = csvs(cfg.pop("val", []), "val", where)
        if not train or not val:
            raise ConfigError(f"{where} needs `train` and `val`: lists of corpus draw names")
        section = {**cfg, "train": [u.name for u in train_in], "val": [u.name for u in val_in]}
        if init is not None:
            cfg["init"] = str(init)
        elif cfg.get("init") and (REPO / cfg["init"]).is_dir():  # a released model to continue: a folder relative
            folder_in = REPO / cfg["init"]  # to the repository root, its weights hashed into the unit
            cfg["init"] = str(folder_in)
            weights = folder_in / "model.safetensors"
            section["init_sha256"] = sha256_hex(weights.read_bytes()) if weights.is_file() else None
        return add(
            stage,
            name,
            folder,
            section,
            [start, *train_in, *val_in],
            lambda resume: finetune(output=str(folder), train_csv=train, val_csv=val, resume=resume, **cfg),
            checkpoint=f"{TRAINING_DIR}/checkpoint.pt",
        )

    final = None
    if "finetune" in config:
        ft = table(config, "finetune")
        phases = ft.pop("phases", [])
        if not phases:
            raise ConfigError("[finetune] needs at least one [[finetune.phases]] table")
        start, init = encoder, None if encoder is None else encoder.folder / "encoder"
        for k, phase in enumerate(phases):
            name = phase.pop("name", f"phase{k + 1}")
            start = finetune_unit(
                "finetune",
                f"finetune/{name}",
                out / "finetune" / name,
                {**ft, **phase},
                start,
                init,
                f"[finetune] phase {name!r}",
            )
            init = start.folder
        final = start

    # evaluate --------------------------------------------------------------------------------------------
    eval_dir = out / "evaluate"
    evaluation = None
    if "evaluate" in config:
        ev = table(config, "evaluate")
        test, test_in = csvs(ev.pop("test", []), "test", "[evaluate]")
        if final is None or not test:
            raise ConfigError("[evaluate] needs a [finetune] table and `test`: a list of corpus draw names")

        def run_evaluate(resume, ev=ev, test=test, model=final.folder):
            data, conditions, info = load_eval_data(csv=test)
            evaluate([str(model)], data, eval_dir, condition_mos=conditions, data_info=info, **ev)

        evaluation = add(
            "evaluate", "evaluate", eval_dir, {**ev, "test": [u.name for u in test_in]}, [final, *test_in], run_evaluate
        )

    # checks ----------------------------------------------------------------------------------------------
    checks_dir = out / "checks"
    checks = None
    if "checks" in config:
        ck = table(config, "checks")
        advisory = ck.pop("advisory", [])
        if final is None:
            raise ConfigError("[checks] needs a [finetune] table")

        def run_checks(resume, ck=ck, advisory=advisory, model=final.folder):
            argv = as_argv(
                {
                    "sources": str(src_dir),
                    "multilingual": str(lang_dir),
                    "noizeus": str(data_root / "eval" / "noizeus_noisy"),
                    "out": str(checks_dir / "quality-checks.md"),
                    "json": str(checks_dir / "quality-checks.json"),
                    **ck,
                },
                positional=(model,),
            )
            with open(checks_dir / "log.txt", "w") as log, contextlib.redirect_stdout(log):
                report = call_script(quality_checks.main, argv, "quality_checks.py")
            required = [c for c in failed_checks(report) if not is_advisory(c, advisory)]
            if required:
                raise RecipeError(
                    f"quality check failed: {required[0]}"
                    + (f" (and {len(required) - 1} more)" if len(required) > 1 else "")
                    + f"; see {checks_dir / 'quality-checks.md'}"
                )

        checks = add(
            "checks", "checks", checks_dir, {**ck, "advisory": advisory}, [final, sources, languages], run_checks
        )

    # bundle ----------------------------------------------------------------------------------------------
    model_dir = out / "model"
    if "bundle" in config:
        bd = table(config, "bundle")
        if final is None:
            raise ConfigError("[bundle] needs a [finetune] table")
        recipe = {
            "config": config_path.stem,
            "config_sha256": sha256_hex(config_path.read_bytes()),
            "git_commit": git_commit(),
        }

        def run_bundle(resume, bd=bd, model=final.folder):
            metrics = eval_dir / "metrics.json" if evaluation is not None else None
            bundle_model.write_model_folder(model, model_dir, eval_metrics=metrics, recipe=recipe, **bd)

        # the hash leaves the commit out: a new commit alone does not redo a model (it keeps the one it was made at)
        add(
            "bundle",
            "bundle",
            model_dir,
            {**bd, "config": recipe["config"], "config_sha256": recipe["config_sha256"]},
            [final, evaluation, checks],
            run_bundle,
        )

    # ablation --------------------------------------------------------------------------------------------
    if "ablation" in config:
        ab = table(config, "ablation")
        ab_dir = out / "ablation"
        seeds, modes = ab.pop("seeds", [0]), ab.pop("modes", {})
        pt_common, ft_common = ab.pop("pretrain", {}), ab.pop("finetune", {})
        if not modes or pairs is None:
            raise ConfigError("[ablation] needs [ablation.modes.NAME] tables and a [pairs] table")
        pretrained = {}
        for name, mode in modes.items():
            pairing = mode.pop("pairing", pairs_cfg.get("pairing", "cross-source"))
            pairs_in = pairs
            if pairing != pairs_cfg.get("pairing", "cross-source"):
                key = f"ablation/pairs-{pairing}"
                pairs_in = by_name.get(key) or pairs_unit(
                    key, ab_dir / f"pairs-{pairing}", {**pairs_cfg, "pairing": pairing}
                )
            pretrained[name] = pretrain_unit(
                f"ablation/pt-{name}", ab_dir / f"pt-{name}", {**pt_common, **mode}, pairs_in
            )
        first = next(iter(pretrained.values()))
        for seed in seeds:
            # scratch: the first mode's network (the same architecture), random weights
            runs = [
                finetune_unit(
                    "ablation",
                    f"ablation/ft-scratch-s{seed}",
                    ab_dir / f"ft-scratch-s{seed}",
                    {**ft_common, "seed": seed, "from_scratch": True},
                    first,
                    first.folder / "encoder",
                    "[ablation.finetune]",
                )
            ]
            runs += [
                finetune_unit(
                    "ablation",
                    f"ablation/ft-{name}-s{seed}",
                    ab_dir / f"ft-{name}-s{seed}",
                    {**ft_common, "seed": seed},
                    pt,
                    pt.folder / "encoder",
                    "[ablation.finetune]",
                )
                for name, pt in pretrained.items()
            ]
            test, test_in = csvs(ab.get("test", []), "test", "[ablation]")

            def run_eval(resume, runs=runs, test=test, seed=seed):
                data, conditions, info = load_eval_data(csv=test)
                evaluate(
                    [str(r.folder) for r in runs],
                    data,
                    ab_dir / f"eval-s{seed}",
                    condition_mos=conditions,
                    data_info=info,
                    plot=False,
                )

            add(
                "ablation",
                f"ablation/eval-s{seed}",
                ab_dir / f"eval-s{seed}",
                {"test": ab.get("test", [])},
                [*runs, *test_in],
                run_eval,
            )
        report_dir = ab_dir / "report"
        add(
            "ablation",
            "ablation/report",
            report_dir,
            {},
            [u for u in units if u.name.startswith("ablation/eval")],
            lambda resume: call_script(
                ablation_report.main, [str(ab_dir), "-o", str(report_dir / "ablation.md")], "ablation_report.py"
            ),
        )
    return units


# ------------------------------------------------------------------------------------------------ checks


def failed_checks(report: dict) -> list[str]:
    """The names of quality_checks.py's failed checks: ``ladders/NAME``, ``noizeus``, ``clean_speech/SOURCE``."""
    failed = [f"ladders/{r['ladder']}" for r in report.get("ladders", []) if not r["passed"]]
    if (report.get("noizeus") or {}).get("passed") is False:
        failed.append("noizeus")
    failed += [f"clean_speech/{c['source']}" for c in report.get("clean_by_source", []) if c["passed"] is False]
    return failed


def is_advisory(check: str, advisory: list[str]) -> bool:
    """``advisory`` names checks or groups of them: ``ladders`` covers every ``ladders/...``."""
    return any(check == a or check.startswith(a.rstrip("/") + "/") for a in advisory)


# ------------------------------------------------------------------------------------------------ running


def run(config_path: Path, out: Path, stages: list[str] | None = None) -> list[tuple[str, str, float]]:
    """Run (or skip) every unit of the chosen stages; returns (unit, "ran" | "skipped", seconds) per unit."""
    try:
        config = tomllib.loads(config_path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{config_path}: no such config file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{config_path}: invalid TOML ({e})") from None
    unknown = set(config) - set(STAGES)
    if unknown:
        raise ConfigError(f"{config_path}: unknown table(s) {', '.join(sorted(unknown))} (stages: {', '.join(STAGES)})")
    out.mkdir(parents=True, exist_ok=True)
    units = plan(config, out.resolve(), config_path)
    chosen = set(stages or STAGES)
    done: list[tuple[str, str, float]] = []
    for unit in units:
        if unit.stage not in chosen:
            continue
        if unit.done():
            print(f"[recipe] {unit.name}: skipped (done for this config)", flush=True)
            done.append((unit.name, "skipped", 0.0))
            continue
        missing = [i.name for i in unit.inputs if not i.done()]
        if missing:
            raise ConfigError(f"{unit.name} needs {', '.join(missing)} done for this config: run that stage first")
        resume = unit.resumable()
        print(f"[recipe] {unit.name}: {'resuming from its checkpoint' if resume else 'running'}", flush=True)
        if not resume:
            shutil.rmtree(unit.folder, ignore_errors=True)
            unit.folder.mkdir(parents=True)
            (unit.folder / STARTED).write_text(json.dumps({"hash": unit.hash}) + "\n")
        t0 = time.perf_counter()
        try:
            unit.run(resume)
        except RecipeError:
            raise
        except (ValueError, TypeError, FileNotFoundError, OSError, RuntimeError) as e:
            raise RecipeError(f"{unit.name} failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        seconds = time.perf_counter() - t0
        finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (unit.folder / DONE).write_text(
            json.dumps({"hash": unit.hash, "seconds": round(seconds, 1), "finished": finished}, indent=1) + "\n"
        )
        with open(out / "timings.tsv", "a") as f:
            f.write(f"{config_path.stem}\t{unit.name}\t{finished}\t{seconds:.1f}\n")
        print(f"[recipe] {unit.name}: done in {seconds:.1f} s", flush=True)
        done.append((unit.name, "ran", seconds))
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True, help="training/configs/NAME.toml")
    ap.add_argument("--out", type=Path, required=True, help="the recipe's folder (OUT/model is the result)")
    ap.add_argument("--stages", default=None, help=f"comma-separated subset of: {','.join(STAGES)}")
    args = ap.parse_args(argv)
    stages = None
    if args.stages is not None:
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        bad = [s for s in stages if s not in STAGES]
        if bad or not stages:
            print(
                f"recipe: --stages: unknown stage(s) {', '.join(bad) or '(none given)'}; choose from "
                f"{', '.join(STAGES)}",
                file=sys.stderr,
            )
            return 2
    try:
        run(args.config, args.out, stages)
    except RecipeError as e:
        print(f"recipe: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    print(
        f"[recipe] finished: {args.out / 'model'}" if (args.out / "model" / DONE).is_file() else "[recipe] finished",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
