"""Hugging Face Hub: ``pull``, ``push``, model cards, and the listing of bundled and cached models.

    jsqa push out/ft  me/jsqa-nisqa --tag v1      config.json + model.safetensors + README.md, one commit
    jsqa pull me/jsqa-nisqa@v1                    → $HF_HUB_CACHE/models--me--jsqa-nisqa/snapshots/<commit>/
    jsqa score x.wav --model me/jsqa-nisqa@v1     the same resolution, through the cache (HF_HUB_OFFLINE=1 works)

Names (bundled, folder, ``ORG/NAME[@REVISION]``) are resolved to folders by :mod:`jsqa_cli.resolve`, which
``model.load_model`` uses; this module builds on both and neither imports it.

Everything goes through ``huggingface_hub`` (endpoint from ``HF_ENDPOINT``, cache from ``HF_HUB_CACHE``/``HF_HOME``,
token from ``HF_TOKEN`` or ``hf auth login``). Every expected failure is a :class:`HubError` (a
:class:`~jsqa_cli.model.ModelError`) whose message is one actionable line; the token never appears in one.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import (
    CommitOperationAdd,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    constants,
    get_token,
    scan_cache_dir,
)
from huggingface_hub.errors import CacheNotFound, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

from jsqa_cli import __version__
from jsqa_cli.audio import HOP_S, SAMPLE_RATE, WINDOW_S
from jsqa_cli.model import P835_HEADS, load_model, read_config
from jsqa_cli.resolve import (
    CARD_NAME,
    CONFIG_NAME,
    METRICS_NAME,
    MODEL_FILES,
    MODEL_TYPE,
    WEIGHTS_NAME,
    HubError,
    ModelError,
    NotAJSQAModelError,
    NotLoggedInError,
    OfflineNotCachedError,
    RepoNotFoundError,
    RevisionMissingError,
    bundled_models,
    default_model_name,
    fetch,
    hub_endpoint,
    parse_hub_id,
    resolve,
)

# The Hub's errors live in resolve (below model and hub); re-exported here with the functions that raise them.
__all__ = [
    "pull", "push", "model_card", "model_info", "list_models", "cached_models", "model_metrics", "metrics_summary",
    "normalize_metrics", "evaluation_markdown", "recipe_provenance", "parameter_count", "resolve_hub_model",
    "PullResult", "PushResult", "ModelEntry", "HubError", "NotAJSQAModelError", "NotLoggedInError",
    "OfflineNotCachedError", "RepoNotFoundError", "RevisionMissingError", "parse_hub_id", "default_model_name",
    "METRICS_NAME", "MODEL_FILES", "CARD_NAME", "CONFIG_NAME", "MODEL_TYPE", "WEIGHTS_NAME",
]  # fmt: skip

CARD_TAGS = ["jsqa", "speech-quality-assessment", "mos-prediction", "audio"]
DEFAULT_LICENSE = "mit"
METRIC_NAMES = {"pcc": "PCC", "srcc": "SRCC", "rmse": "RMSE", "mae": "MAE"}
HUB_METRIC_TYPES = {"pcc": "pearsonr", "srcc": "spearmanr", "rmse": "rmse", "mae": "mae"}


# ----------------------------------------------------------------------------------------------- pull


@dataclass
class PullResult:
    repo_id: str
    revision: str  # as asked ("main" when none was given)
    commit: str  # the commit it resolved to
    path: Path  # folder with config.json + model.safetensors

    @property
    def name(self) -> str:
        return f"{self.repo_id}@{self.revision}"


def pull(
    name: str, dest: str | Path | None = None, *, cache_dir: str | Path | None = None, verify: bool = True
) -> PullResult:
    """Download a model's files (config.json, model.safetensors, metrics.json if any) into the Hugging Face cache
    and return where they are. With ``dest`` the files are then copied there as plain files. ``verify`` loads the
    model once to prove it works. A full commit sha that is already cached is used without any network access."""
    got = fetch(name, cache_dir=cache_dir)
    result = PullResult(got.repo_id, got.revision, got.commit, got.path)
    if verify:
        load_model(got.path)
    if dest is not None:
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for f in MODEL_FILES:
            if (got.path / f).is_file():
                shutil.copyfile(got.path / f, dest / f)  # follows the cache's symlinks: plain files
        result.path = dest
    return result


def resolve_hub_model(name: str) -> Path:
    """``ORG/NAME[@REVISION]`` → a local folder through the cache (what every ``--model`` option uses)."""
    return fetch(name).path


# ----------------------------------------------------------------------------------------------- metrics


def normalize_metrics(obj, model_label: str | None = None) -> list[dict]:
    """Metrics in the shapes jsqa writes → rows ``{"dataset", "level", "n", "pcc", "srcc", "rmse", "mae"}``.

    Accepted: the ``metrics.json`` of ``jsqa evaluate`` (``{"metrics": [records]}``; with several models, the rows
    of ``model_label`` or else of the reference model), a list of such records, ``{dataset: {metric: v}}``,
    ``{dataset: {level: {metric: v}}}``, or a flat ``{metric: v}`` (e.g. ``{"val_pcc": 0.9}``).
    """
    if isinstance(obj, dict) and isinstance(obj.get("metrics"), (list, dict)):
        records = obj["metrics"]
        if isinstance(records, list):
            models = list(dict.fromkeys(r.get("model") for r in records if isinstance(r, dict)))
            if len(models) > 1:
                keep = model_label if model_label in models else obj.get("reference_model", models[0])
                records = [r for r in records if r.get("model") == keep]
        return normalize_metrics(records)
    if isinstance(obj, list):
        rows = []
        for r in obj:
            if isinstance(r, dict):
                values = {k: r[k] for k in METRIC_NAMES if _is_number(r.get(k))}
                if values:
                    level, scale = str(r.get("level", "file")), str(r.get("scale", "mos"))
                    rows.append(
                        {
                            "dataset": str(r.get("dataset", "-")),
                            # P.835 rows of `jsqa evaluate` (scale sig/bak) keep their scale in the level
                            "level": level if scale == "mos" else f"{scale.upper()} {level}",
                            "n": r.get("n"),
                            **values,
                        }
                    )
        return rows
    return _from_mapping(obj) if isinstance(obj, dict) else []


def _from_mapping(obj: dict, dataset: str = "-", level: str = "-") -> list[dict]:
    """{metric: v} at this level → one row; {key: {...}} → rows below (first key level: dataset, then level)."""
    rows = []
    values = {k: v for k, v in obj.items() if _is_number(v)}
    n = values.pop("n", None)
    if values:
        rows.append({"dataset": dataset, "level": level, "n": n, **values})
    for key, value in obj.items():
        if isinstance(value, dict):
            rows += _from_mapping(value, str(key)) if dataset == "-" else _from_mapping(value, dataset, str(key))
    return rows


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def model_metrics(
    folder: str | Path, metadata: dict | None = None, metrics_path: str | Path | None = None
) -> list[dict]:
    """A model's evaluation rows: ``metrics_path``, else ``metrics.json`` next to the model, else
    ``metadata["metrics"]`` from config.json. Unreadable files are a HubError naming the file."""
    folder = Path(folder)
    path = Path(metrics_path) if metrics_path is not None else folder / METRICS_NAME
    if path.is_file():
        try:
            return normalize_metrics(json.loads(path.read_text()), model_label=str(folder))
        except json.JSONDecodeError as e:
            raise HubError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if metrics_path is not None:
        raise HubError(f"{path}: no such metrics file")
    if metadata is None:
        _, metadata = read_config(folder)
    if metadata.get("metrics"):
        return normalize_metrics(metadata["metrics"])
    return _validation_rows(metadata)


def _validation_rows(metadata: dict) -> list[dict]:
    """``jsqa finetune``'s best validation scores (metadata "validation": n, rmse, ..., "condition": {...})."""
    val = metadata.get("validation")
    if not isinstance(val, dict) or not val:
        return []
    data = metadata.get("data") if isinstance(metadata.get("data"), dict) else {}
    csvs = data.get("val_csv")
    name = (
        "+".join(data["val_db"])
        if data.get("val_db")
        else Path(csvs).name
        if isinstance(csvs, str)
        else "+".join(f"{Path(c).parent.name}/{Path(c).name}" for c in csvs)
        if csvs
        else "validation set"
    )
    levels = {"file": {k: v for k, v in val.items() if k != "condition"}}
    if isinstance(val.get("condition"), dict):
        levels["condition"] = val["condition"]
    return normalize_metrics({f"{name} (validation)": levels})


def metrics_summary(rows: list[dict], limit: int = 2) -> str:
    """A short one-line summary for listings, e.g. 'NISQA_TEST_FOR/file PCC 0.91 RMSE 0.52'."""
    parts = []
    for r in rows[:limit]:
        vals = " ".join(f"{METRIC_NAMES[m]} {r[m]:.3f}" for m in ("pcc", "rmse") if m in r) or " ".join(
            f"{k} {v:.3g}" for k, v in r.items() if k not in ("dataset", "level", "n") and _is_number(v)
        )
        label = "/".join(x for x in (r["dataset"], r["level"]) if x != "-")
        parts.append(f"{label} {vals}".strip())
    more = f" (+{len(rows) - limit} more)" if len(rows) > limit else ""
    return "; ".join(parts) + more if parts else "-"


# ----------------------------------------------------------------------------------------------- model card


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        if any(isinstance(x, dict) for x in v):  # e.g. the parts of an averaged model: one (...) each
            return "; ".join(f"({_fmt(x)})" for x in v)
        return ", ".join(map(str, v))
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)


def evaluation_markdown(rows: list[dict]) -> str:
    """The card's evaluation section: a table of PCC/SRCC/RMSE/MAE, other recorded values listed below it."""
    if not rows:
        return "No evaluation was recorded with this model. Measure it with `jsqa evaluate`."
    known = [r for r in rows if any(m in r for m in METRIC_NAMES)]
    lines = []
    if known:
        lines += ["| data | level | n | PCC | SRCC | RMSE | MAE |", "|---|---|---|---|---|---|---|"]
        lines += [
            f"| {r['dataset']} | {r['level']} | {r['n'] if r.get('n') is not None else '-'} | "
            + " | ".join(f"{r[m]:.3f}" if m in r else "-" for m in METRIC_NAMES)
            + " |"
            for r in known
        ]
        lines += [
            "",
            "PCC/SRCC: Pearson/Spearman correlation with the data's MOS labels (higher is better); "
            "RMSE/MAE in MOS points (lower is better).",
        ]
    other = [
        (r, k, v)
        for r in rows
        for k, v in r.items()
        if k not in ("dataset", "level", "n", *METRIC_NAMES) and _is_number(v)
    ]
    if other:
        lines += ["", "Other recorded values:", ""]
        lines += [
            f"- {'/'.join(x for x in (r['dataset'], r['level']) if x != '-') or 'all'} {k}: {_fmt(v)}"
            for r, k, v in other
        ]
    return "\n".join(lines).strip()


SCALES = {
    "mos": "`mos`: overall quality, 1 bad … 5 excellent (ITU-T P.800 absolute category rating)",
    "sig": "`sig`: the speech signal alone, 1 very distorted … 5 not distorted (ITU-T P.835 SIG)",
    "bak": "`bak`: the background, 1 very intrusive … 5 not noticeable (ITU-T P.835 BAK)",
}


def _scales_text(reported: list[str]) -> str:
    """The card's paragraph on the scores beyond MOS ('' for a MOS-only model)."""
    if len(reported) == 1:
        return ""
    lines = "\n".join(f"- {SCALES[h]}" for h in reported)
    return (
        f"It also gives the ITU-T P.835 scores, each a column of `jsqa score`'s output:\n\n{lines}\n\n"
        "A clip with loud noise but intact speech has a low `bak` and a high `sig`; a clean clip through a poor "
        "codec has the reverse. `mos` is the overall judgement, not their mean.\n\n"
    )


def model_card(
    folder: str | Path, repo_id: str, *, license: str | None = None, metrics: list[dict] | None = None
) -> ModelCard:
    """The README.md for a pushed model folder: YAML metadata (library, tags, licence, model-index with the
    evaluation) and sections: what it predicts, training data & provenance, evaluation, usage."""
    folder = Path(folder)
    cfg, meta = read_config(folder)
    metrics = model_metrics(folder, meta) if metrics is None else metrics
    num_params = parameter_count(folder)
    flatness = f" + spectral flatness ({cfg.flatness_bands} bands)" if cfg.flatness_bands else ""
    phase = f" + group-delay deviation ({cfg.phase_bands} bands)" if cfg.phase_bands else ""
    phase += f" + lag similarity ({cfg.echo_bands} echo bands)" if cfg.echo_bands else ""
    reported = ["mos", *(h for h in P835_HEADS if h in cfg.extra_heads)]
    architecture = (
        f"log-mel ({cfg.n_mels} bands){flatness}{phase} → conv stem → {cfg.n_layers}-layer Transformer "
        f"(d={cfg.d_model}) → attention pooling → {', '.join(h.upper() for h in reported)} head"
        + ("s" if len(reported) > 1 else "")
    )
    name = repo_id.split("/")[-1]
    eval_results = [
        EvalResult(
            task_type="speech-quality-assessment",
            task_name="Speech quality assessment (MOS prediction)",
            dataset_type=r["dataset"],
            dataset_name=r["dataset"],
            dataset_split=None if r["level"] == "-" else r["level"],
            metric_type=HUB_METRIC_TYPES[m],
            metric_name=METRIC_NAMES[m] + ("" if r["level"] == "-" else f" ({r['level']})"),
            metric_value=round(float(r[m]), 4),
        )
        for r in metrics
        for m in METRIC_NAMES
        if m in r and r["dataset"] != "-"
    ]
    datasets = meta.get("datasets") or meta.get("data")
    data = ModelCardData(
        library_name="jsqa",
        license=license or meta.get("license") or DEFAULT_LICENSE,
        tags=list(CARD_TAGS),
        model_name=name,
        eval_results=eval_results or None,
        metrics=[HUB_METRIC_TYPES[m] for m in METRIC_NAMES if any(m in r for r in metrics)] or None,
        datasets=[str(d) for d in datasets] if isinstance(datasets, list) else None,
    )

    provenance = {k: v for k, v in meta.items() if k not in ("metrics", "validation")}
    prov_rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in provenance.items()) or "| - | not recorded |"
    eval_text = evaluation_markdown(metrics)
    body = f"""
# {name}

A [jsqa](https://pypi.org/project/jsqa/) speech quality model (JSQA: contrastive pretraining on just-noticeable-
difference noisy-speech pairs, then MOS fine-tuning; Fan & Williamson 2025).

## What it predicts

A mean opinion score (MOS) from 1 (bad) to 5 (excellent) for a speech recording, without a clean reference.
{_scales_text(reported)}Audio is read as mono at {SAMPLE_RATE // 1000} kHz (other rates are resampled); files \
longer than {WINDOW_S:g} s are scored in {WINDOW_S:g} s windows with a {HOP_S:g} s hop and the file score is the \
mean of the window scores.

| | |
|---|---|
| architecture | {architecture} |
| preset | {cfg.preset} |
| parameters | {num_params:,} |

## Training data and provenance

| field | value |
|---|---|
{prov_rows}

## Evaluation

{eval_text}

## Usage

With the `jsqa` command line (`pip install jsqa`):

```bash
jsqa pull {repo_id}
jsqa score recordings/ --model {repo_id} -o scores.csv
```

From Python:

```python
from jsqa_cli.model import load_model
from jsqa_cli.scoring import score_files

model = load_model("{repo_id}")  # or "{repo_id}@<tag or commit>" to pin a version
scores = score_files(["speech.wav"], model)  # a DataFrame: path, mos, ...
print(scores[["path", "mos"]])
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


# ----------------------------------------------------------------------------------------------- push


@dataclass
class PushResult:
    repo_id: str
    commit: str
    commit_url: str
    revision: str
    tag: str | None = None
    card: str = "generated"  # generated | kept
    files: list[str] = field(default_factory=list)


def _token(token: str | None) -> str:
    token = token or get_token()
    if not token:
        raise NotLoggedInError(
            "not logged in to the Hugging Face Hub: set HF_TOKEN or run `hf auth login` (the token needs write access)"
        )
    return token


def _push_http_error(repo_id: str, e: HfHubHTTPError) -> HubError:
    status = e.response.status_code if e.response is not None else None
    if status == 401:
        return NotLoggedInError(
            f"{repo_id}: the Hub rejected the token (HTTP 401); check HF_TOKEN or run "
            "`hf auth login` with a token that has write access"
        )
    if status == 403:
        return HubError(
            f"{repo_id}: the token may not write to this repo (HTTP 403); use a write token or a "
            "namespace you belong to"
        )
    return HubError(f"{repo_id}: the Hub answered HTTP {status} ({str(e).splitlines()[0]})")


def push(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    tag: str | None = None,
    message: str | None = None,
    card: str = "keep",
    license: str | None = None,
    metrics_path: str | Path | None = None,
    token: str | None = None,
) -> PushResult:
    """Upload a model folder to ``repo_id`` in one commit: config.json, model.safetensors, README.md (the model
    card: kept if the folder has one and ``card="keep"``, generated otherwise) and metrics.json when present.
    Creates the repo (and branch ``revision``) if needed; ``tag`` tags the new commit."""
    if card not in ("keep", "regenerate"):
        raise HubError(f"--card {card!r}: choose keep or regenerate")
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder}: no such model folder")
    load_model(folder)  # refuse to publish something that does not load
    repo_id, at_rev = parse_hub_id(repo_id)
    if at_rev:
        raise HubError(f"{repo_id}@{at_rev}: give the branch with --revision, not @")
    token = _token(token)
    branch = revision or constants.DEFAULT_REVISION

    metrics_file = Path(metrics_path) if metrics_path is not None else folder / METRICS_NAME
    if metrics_path is not None and not metrics_file.is_file():
        raise HubError(f"{metrics_file}: no such metrics file (--metrics)")
    if card == "keep" and (folder / CARD_NAME).is_file():
        card_bytes, card_state = (folder / CARD_NAME).read_bytes(), "kept"
    else:
        metrics = model_metrics(folder, metrics_path=metrics_path)
        card_bytes = str(model_card(folder, repo_id, license=license, metrics=metrics)).encode()
        card_state = "generated"
    ops = [
        CommitOperationAdd(CONFIG_NAME, str(folder / CONFIG_NAME)),
        CommitOperationAdd(WEIGHTS_NAME, str(folder / WEIGHTS_NAME)),
        CommitOperationAdd(CARD_NAME, card_bytes),
    ]
    if metrics_file.is_file():
        ops.append(CommitOperationAdd(METRICS_NAME, str(metrics_file)))

    api = HfApi(token=token, library_name="jsqa", library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        info = api.create_commit(
            repo_id, operations=ops, revision=branch, commit_message=message or f"Upload jsqa model ({folder.name})"
        )
        if tag:
            api.create_tag(repo_id, tag=tag, revision=info.oid)
    except OfflineModeIsEnabled:
        raise HubError(f"{repo_id}: cannot push with HF_HUB_OFFLINE=1; unset it") from None
    except RepositoryNotFoundError:
        raise RepoNotFoundError(
            f"{repo_id}: repository not found and could not be created on {hub_endpoint()}; "
            "check the namespace and that the token may write to it"
        ) from None
    except HfHubHTTPError as e:
        if tag and e.response is not None and e.response.status_code == 409:
            raise HubError(f"{repo_id}: tag {tag!r} already exists; choose another --tag") from None
        raise _push_http_error(repo_id, e) from None
    return PushResult(repo_id, info.oid, info.commit_url, branch, tag, card_state, [op.path_in_repo for op in ops])


# ----------------------------------------------------------------------------------------------- listing


def parameter_count(folder: str | Path) -> int:
    """Trainable parameters, read from the safetensors header (no weights loaded). Fixed front-end buffers
    (the mel filterbank and window) are not counted, as in ``JSQA.num_parameters``."""
    from safetensors import safe_open

    with safe_open(str(Path(folder) / WEIGHTS_NAME), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if not k.startswith("encoder.frontend."))


@dataclass
class ModelEntry:
    name: str  # what to pass to --model
    source: str  # bundled | cache | folder
    path: Path
    revision: str = "-"
    commit: str = "-"
    refs: list[str] = field(default_factory=list)
    parameters: int | None = None
    preset: str = "-"
    metrics: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)


def _entry(name: str, source: str, path: Path, **kw) -> ModelEntry:
    cfg, meta = read_config(path)
    try:
        params = parameter_count(path)
    except Exception:  # a damaged weights file is reported when the model is loaded, not while listing
        params = None
    from dataclasses import asdict

    return ModelEntry(
        name,
        source,
        path,
        parameters=params,
        preset=cfg.preset,
        metrics=model_metrics(path, meta),
        config=asdict(cfg),
        metadata=meta,
        **kw,
    )


def cached_models(cache_dir: str | Path | None = None) -> list[ModelEntry]:
    """jsqa models in the Hugging Face cache (``config.json`` with model_type jsqa), one entry per cached commit."""
    try:
        info = scan_cache_dir(cache_dir or constants.HF_HUB_CACHE)  # its default is fixed at import
    except CacheNotFound:
        return []
    out = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for rev in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            path = Path(rev.snapshot_path)
            try:
                if json.loads((path / CONFIG_NAME).read_text()).get("model_type") != MODEL_TYPE:
                    continue
            except (OSError, json.JSONDecodeError):
                continue
            if not (path / WEIGHTS_NAME).is_file():
                continue
            refs = sorted(rev.refs)
            revision = refs[0] if refs else rev.commit_hash[:12]
            name = f"{repo.repo_id}@{revision}" if revision != constants.DEFAULT_REVISION else repo.repo_id
            out.append(_entry(name, "cache", path, revision=revision, commit=rev.commit_hash, refs=refs))
    return out


def list_models(cache_dir: str | Path | None = None) -> list[ModelEntry]:
    """The bundled models, then the jsqa models in the Hugging Face cache."""
    return [_entry(n, "bundled", p) for n, p in bundled_models().items()] + cached_models(cache_dir)


# What the training recipe records in config.json's metadata["recipe"], in the order `jsqa info` shows it.
RECIPE_FIELDS = {"config": "recipe config", "config_sha256": "recipe config sha256", "git_commit": "recipe git commit"}


def recipe_provenance(metadata: dict) -> dict[str, str]:
    """``metadata["recipe"]`` (``{"config": name, "config_sha256": hash, "git_commit": sha}``) → {label: value}
    for the fields present, known ones first; {} when the model was not made by the recipe."""
    recipe = metadata.get("recipe")
    if isinstance(recipe, str) and recipe:  # models made before training/recipe.py: a sentence saying how
        return {"recipe": recipe}
    if not isinstance(recipe, dict):
        return {}
    keys = [k for k in RECIPE_FIELDS if k in recipe] + [k for k in recipe if k not in RECIPE_FIELDS]
    return {RECIPE_FIELDS.get(k, f"recipe {k}"): _fmt(recipe[k]) for k in keys if recipe[k] not in (None, "")}


def model_info(name: str | None = None) -> ModelEntry:
    """Config, parameter count, metrics and provenance of a bundled name, folder or Hub id (fetched if needed);
    None means the model ``jsqa score`` would use ($JSQA_MODEL, else the bundled default)."""
    got = resolve(name)
    if got.source == "cache":
        return _entry(got.name, got.source, got.path, revision=got.revision, commit=got.commit)
    return _entry(got.name, got.source, got.path)
