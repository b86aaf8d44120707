"""Model names → local model folders: the one place that knows what a ``--model`` may be.

    jsqa-small              a model bundled in the package (jsqa_cli/weights/jsqa-small)
    runs/finetune/model     a folder with config.json + model.safetensors
    me/jsqa-nisqa@v1        a Hugging Face Hub id ORG/NAME[@BRANCH, @TAG or @COMMIT], fetched into the HF cache

Bundled names win over folders, folders over Hub ids. No name at all means ``$JSQA_MODEL``, else ``jsqa-small``.
Each resolved model carries the name scores report it by: the bundled name, the folder as given, or
``ORG/NAME@REVISION`` (``@main`` when no revision was given).

Imports flow one way: ``resolve`` ← ``model`` (``load_model`` resolves names here) ← ``hub`` (push, pull, cards,
listing). This module imports neither, and imports ``huggingface_hub`` only when it meets a Hub id, so scoring
with a bundled or local model never loads it. Every expected failure is a :class:`ModelError` whose message is one
actionable line; the Hub's are :class:`HubError` subclasses.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
METRICS_NAME = "metrics.json"  # what `jsqa evaluate -o DIR` writes; pushed and pulled when next to the model
MODEL_FILES = [CONFIG_NAME, WEIGHTS_NAME, METRICS_NAME]  # what a Hub id downloads (README.md is for people)
MODEL_TYPE = "jsqa"
WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "jsqa-small"  # the bundled model used when no model is named and $JSQA_MODEL is unset
_SHA = re.compile(r"^[0-9a-f]{40}$")


class ModelError(Exception):
    """A model name or folder that cannot be used; ``str(err)`` is one actionable line."""


class HubError(ModelError):
    """A Hub operation that cannot go on; ``str(err)`` is one actionable line."""


class NotLoggedInError(HubError):
    pass


class RepoNotFoundError(HubError):
    pass


class RevisionMissingError(HubError):
    pass


class OfflineNotCachedError(HubError):
    pass


class NotAJSQAModelError(HubError):
    pass


@dataclass
class ResolvedModel:
    """Where a model name led: its folder, and the name scores and listings report it by."""

    name: str  # the bundled name, the folder as given, or ORG/NAME@REVISION
    path: Path  # folder with config.json + model.safetensors
    source: str  # bundled | folder | cache (a Hub id, through the Hugging Face cache)
    repo_id: str | None = None  # Hub ids only, as are the two below
    revision: str | None = None  # as asked ("main" when none was given)
    commit: str | None = None  # the commit it resolved to


# ----------------------------------------------------------------------------------------------- local models


def read_config_dict(folder: str | Path) -> dict:
    """A model folder's ``config.json`` as a dict; ModelError if it is missing, not JSON or not a jsqa model."""
    path = Path(folder) / CONFIG_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{folder}: not a jsqa model folder (no {CONFIG_NAME})") from None
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(raw, dict) or raw.get("model_type") != MODEL_TYPE:
        found = raw.get("model_type") if isinstance(raw, dict) else None
        raise ModelError(f"{path}: not a jsqa model (model_type={found!r})")
    return raw


def bundled_models() -> dict[str, Path]:
    """Names → folders of the models shipped inside the package."""
    if not WEIGHTS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(WEIGHTS_DIR.iterdir()) if (p / CONFIG_NAME).is_file()}


def default_model_name() -> str:
    """The model used when none is named: ``$JSQA_MODEL``, else the bundled default."""
    return os.environ.get("JSQA_MODEL") or DEFAULT_MODEL


def resolve(name_or_path: str | os.PathLike | None = None) -> ResolvedModel:
    """A bundled name, a local folder or a Hub id ``ORG/NAME[@REVISION]`` (None: :func:`default_model_name`)
    → :class:`ResolvedModel`. Hub ids are fetched into the Hugging Face cache if needed."""
    name = str(name_or_path) if name_or_path is not None else default_model_name()
    bundled = bundled_models()
    if name in bundled:
        return ResolvedModel(name, bundled[name], "bundled")
    path = Path(name).expanduser()
    if path.is_dir():
        return ResolvedModel(name, path, "folder")
    if path.exists():
        raise ModelError(f"{name}: a model is a folder with {CONFIG_NAME} and {WEIGHTS_NAME}, not a file")
    if looks_like_hub_id(name):
        return fetch(name)
    known = ", ".join(bundled) or "none installed"
    raise ModelError(f"{name}: no such model folder, bundled model ({known}) or Hub id (ORG/NAME[@REVISION])")


def resolve_model(name_or_path: str | os.PathLike | None = None) -> Path:
    """Like :func:`resolve`, only the folder."""
    return resolve(name_or_path).path


# ----------------------------------------------------------------------------------------------- Hub ids


def looks_like_hub_id(name: str) -> bool:
    repo = name.split("@", 1)[0]
    parts = repo.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not name.startswith((".", "/", "~"))
        and not any(p in (".", "..") for p in parts)
    )


def parse_hub_id(name: str) -> tuple[str, str | None]:
    """``ORG/NAME[@REVISION]`` → (repo_id, revision or None). The revision is a branch, tag or commit sha."""
    repo_id, _, revision = str(name).partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise HubError(f"{name}: not a Hub model id; expected ORG/NAME or ORG/NAME@REVISION")
    if "@" in name and not revision:
        raise HubError(f"{name}: empty revision after '@'; expected ORG/NAME@BRANCH, @TAG or @COMMIT")
    return repo_id, revision or None


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def fetch(name: str, cache_dir: str | Path | None = None) -> ResolvedModel:
    """``ORG/NAME[@REVISION]`` → its files (config.json, model.safetensors, metrics.json if any) in the Hugging
    Face cache, checked to be a jsqa model folder. A full commit sha that is already cached is used without any
    network access; otherwise the Hub is asked, and cached revisions are used when it cannot be reached."""
    from huggingface_hub import constants, try_to_load_from_cache

    repo_id, revision = parse_hub_id(name)
    revision = revision or constants.DEFAULT_REVISION
    path = None
    if _SHA.match(revision):  # immutable: a cached copy is always right
        cached = try_to_load_from_cache(repo_id, CONFIG_NAME, revision=revision, cache_dir=cache_dir)
        if isinstance(cached, str) and (Path(cached).parent / WEIGHTS_NAME).is_file():
            path = Path(cached).parent
    if path is None:
        path = _download(name, repo_id, revision, cache_dir)
    try:
        read_config_dict(path)
    except ModelError as e:
        raise NotAJSQAModelError(f"{name}: {str(e).split(': ', 1)[-1]}") from None
    if not (path / WEIGHTS_NAME).is_file():
        raise NotAJSQAModelError(f"{name}: not a jsqa model (the repo has no {WEIGHTS_NAME})")
    return ResolvedModel(f"{repo_id}@{revision}", path, "cache", repo_id, revision, path.name)


def _download(name: str, repo_id: str, revision: str, cache_dir: str | Path | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from jsqa_cli import __version__

    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=MODEL_FILES,
                cache_dir=cache_dir,
                library_name="jsqa",
                library_version=__version__,
            )
        )
    except GatedRepoError:
        raise HubError(
            f"{name}: {repo_id} is gated; accept its conditions on {hub_endpoint()}/{repo_id} and log "
            "in (`hf auth login` or HF_TOKEN)"
        ) from None
    except (RevisionNotFoundError, RepositoryNotFoundError):  # olah and private repos answer a missing revision so
        raise _repo_or_revision_error(name, repo_id, revision) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise _cache_error(name) from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise HubError(f"{name}: the Hub answered HTTP {status} ({str(e).splitlines()[0]})") from None


def _cache_error(name: str) -> HubError:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return OfflineNotCachedError(
            f"{name}: not in the local cache and HF_HUB_OFFLINE=1; unset HF_HUB_OFFLINE and run "
            f"`jsqa pull {name}` once (cache: {constants.HF_HUB_CACHE})"
        )
    return OfflineNotCachedError(
        f"{name}: cannot reach {hub_endpoint()} and the model is not in the local cache ({constants.HF_HUB_CACHE}); "
        "check the network or HF_ENDPOINT"
    )


def _refs_summary(repo_id: str) -> str | None:
    """'branches: main; tags: v1' when the repo is readable, None when it is not (so the repo is the problem)."""
    from huggingface_hub import HfApi

    try:
        refs = HfApi().list_repo_refs(repo_id)
    except Exception:  # any failure here means "could not confirm the repo exists"
        return None
    branches = ", ".join(r.name for r in refs.branches) or "none"
    tags = ", ".join(r.name for r in refs.tags) or "none"
    return f"branches: {branches}; tags: {tags}"


def _repo_or_revision_error(name: str, repo_id: str, revision: str) -> HubError:
    refs = _refs_summary(repo_id)
    if refs is not None:  # the repo answers, so it is the revision that is missing
        return RevisionMissingError(f"{name}: revision {revision!r} not found in {repo_id} ({refs})")
    return RepoNotFoundError(
        f"{name}: repository {repo_id} not found on {hub_endpoint()} (if it is private, log in with "
        "`hf auth login` or set HF_TOKEN)"
    )
