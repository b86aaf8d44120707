"""Hugging Face Hub: pull through a real Hub mirror (olah), push through a local upload test double, round trips.

Servers listen on 127.0.0.1 only and live for this module (see tests/hub_server.py). Each test gets its own empty
HF cache and token file; HF_HUB_DISABLE_XET=1 (the double speaks the legacy LFS upload protocol).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import hub_server
import numpy as np
import pytest
import torch
from conftest import synth_speech
from huggingface_hub import ModelCard, constants
from typer.testing import CliRunner

from jsqa_cli import hub
from jsqa_cli.cli import app
from jsqa_cli.model import build_model, load_model, read_config, save_model

TOKEN = "hf_test_double_token_0123456789"
REPO = "jsqa-test/tiny"
runner = CliRunner()

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # httpx2 on the legacy LFS PUT path


def _tiny_folder(path, seed: int, metadata: dict | None = None):
    torch.manual_seed(seed)
    return save_model(build_model("tiny"), path, metadata=metadata or {"stage": "test", "seed": seed})


def _score(model, wav: np.ndarray) -> float:
    with torch.no_grad():
        return float(model(torch.from_numpy(wav)[None])[0])


@pytest.fixture(scope="module")
def hub_servers(tmp_path_factory):
    """olah (read API) behind the upload test double (write API): one endpoint. Seeds REPO with two commits
    (v1 = seed 0, then main = seed 1) and a repo that is not a jsqa model."""
    if hub_server.olah_command() is None:
        pytest.skip("olah is not installed (pip install -e '.[test]')")
    if shutil.which("git") is None:
        pytest.skip("git is not installed (the Hub test servers keep repos in git)")
    root = tmp_path_factory.mktemp("hub")
    mirrors = root / "mirrors"
    double = hub_server.UploadTestDouble(mirrors, token=TOKEN).start()
    olah = hub_server.OlahServer(root / "olah", mirrors, public_netloc=double.netloc)
    try:
        olah.start()
        double.upstream = olah.url
        repo = hub_server.init_repo(mirrors, REPO)
        commits = {}
        for seed, tag in ((0, "v1"), (1, None)):
            folder = _tiny_folder(root / f"seed{seed}", seed)
            files = {f: (folder / f).read_bytes() for f in ("config.json", "model.safetensors")}
            commits[seed] = hub_server.commit_files(repo, "main", files, f"seed {seed}", tag=tag)
        other = hub_server.init_repo(mirrors, "jsqa-test/not-jsqa")
        hub_server.commit_files(
            other, "main", {"config.json": b'{"model_type": "bert"}\n', "model.safetensors": b"\0" * 200}, "bert"
        )
        yield {"url": double.url, "double": double, "mirrors": mirrors, "root": root, "commits": commits}
    finally:
        olah.stop()
        double.stop()


@pytest.fixture
def hub_env(hub_servers, tmp_path, monkeypatch):
    """Point huggingface_hub at the local servers with a fresh cache and no stored token."""
    url = hub_servers["url"]
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "hf-home" / "agents.json"))
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "JSQA_MODEL"):
        monkeypatch.delenv(var, raising=False)
    return hub_servers


def _offline(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{hub_server.free_port()}")  # nothing listens


# ------------------------------------------------------------------------------------------------ pure parts


def test_parse_hub_id():
    assert hub.parse_hub_id("org/name") == ("org/name", None)
    assert hub.parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    assert hub.parse_hub_id("org/name@refs/pr/1") == ("org/name", "refs/pr/1")
    for bad in ("name", "org/name/x", "org/", "org/name@", "../x"):
        with pytest.raises(hub.HubError, match="ORG/NAME"):
            hub.parse_hub_id(bad)


def test_normalize_metrics_shapes():
    evaluate_doc = {
        "reference_model": "a",
        "metrics": [
            {
                "dataset": "FOR",
                "level": "file",
                "model": "a",
                "n": 240,
                "pcc": 0.9,
                "srcc": 0.88,
                "rmse": 0.5,
                "mae": 0.4,
                "pcc_change_pct": None,
            },
            {
                "dataset": "FOR",
                "level": "file",
                "model": "b",
                "n": 240,
                "pcc": 0.7,
                "srcc": None,
                "rmse": 0.6,
                "mae": 0.5,
            },
        ],
    }
    assert hub.normalize_metrics(evaluate_doc) == [
        {"dataset": "FOR", "level": "file", "n": 240, "pcc": 0.9, "srcc": 0.88, "rmse": 0.5, "mae": 0.4}
    ]
    assert hub.normalize_metrics(evaluate_doc, model_label="b")[0]["pcc"] == 0.7
    nested = {"val_pcc": 0.8, "P501": {"file": {"pcc": 0.9, "n": 3}, "condition": {"pcc": 0.95}}}
    assert hub.normalize_metrics(nested) == [
        {"dataset": "-", "level": "-", "n": None, "val_pcc": 0.8},
        {"dataset": "P501", "level": "file", "n": 3, "pcc": 0.9},
        {"dataset": "P501", "level": "condition", "n": None, "pcc": 0.95},
    ]
    assert hub.normalize_metrics({}) == [] and hub.normalize_metrics(None) == []


def test_finetune_validation_metrics(tmp_path):
    meta = {
        "stage": "finetuned",
        "data": {"source": "nisqa", "val_db": ["NISQA_VAL_SIM", "NISQA_VAL_LIVE"]},
        "validation": {
            "n": 50,
            "rmse": 0.61,
            "mae": 0.5,
            "pcc": 0.82,
            "srcc": 0.8,
            "condition": {"n": 10, "rmse": 0.4, "mae": 0.3, "pcc": 0.9, "srcc": 0.88},
        },
    }
    folder = _tiny_folder(tmp_path / "ft", 0, meta)
    rows = hub.model_metrics(folder)
    assert [(r["dataset"], r["level"], r["n"], r["pcc"]) for r in rows] == [
        ("NISQA_VAL_SIM+NISQA_VAL_LIVE (validation)", "file", 50, 0.82),
        ("NISQA_VAL_SIM+NISQA_VAL_LIVE (validation)", "condition", 10, 0.9),
    ]
    text = hub.model_card(folder, "me/ft").text
    assert "| NISQA_VAL_SIM+NISQA_VAL_LIVE (validation) | condition | 10 | 0.900 |" in text
    assert "| validation |" not in text  # shown as evaluation, not as provenance


def test_model_card_metadata_and_sections(tmp_path):
    folder = _tiny_folder(tmp_path / "m", 0, {"stage": "finetune", "init": "runs/pre/encoder", "license": "cc-by-4.0"})
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "metrics": [
                    {
                        "dataset": "NISQA_TEST_FOR",
                        "level": "file",
                        "model": "m",
                        "n": 240,
                        "pcc": 0.91,
                        "srcc": 0.9,
                        "rmse": 0.52,
                        "mae": 0.41,
                    }
                ]
            }
        )
    )
    card = hub.model_card(folder, "me/jsqa-tiny")
    data = ModelCard(str(card)).data.to_dict()  # parsed back the way the Hub does
    assert data["library_name"] == "jsqa" and data["license"] == "cc-by-4.0"
    assert {"speech-quality-assessment", "mos-prediction", "audio"} <= set(data["tags"])
    results = data["model-index"][0]["results"]
    assert {m["type"]: m["value"] for r in results for m in r["metrics"]}["pearsonr"] == 0.91
    text = card.text
    for section in ("## What it predicts", "## Training data and provenance", "## Evaluation", "## Usage"):
        assert section in text
    assert "| NISQA_TEST_FOR | file | 240 | 0.910 | 0.900 | 0.520 | 0.410 |" in text
    assert "runs/pre/encoder" in text and 'load_model("me/jsqa-tiny")' in text
    assert "jsqa score recordings/ --model me/jsqa-tiny" in text
    bare = hub.model_card(_tiny_folder(tmp_path / "bare", 0), "me/bare")
    assert "model-index" not in bare.data.to_dict() and "No evaluation was recorded" in bare.text


def test_parameter_count_matches_model(tiny_model_dir):
    assert hub.parameter_count(tiny_model_dir) == load_model(tiny_model_dir).num_parameters


# ------------------------------------------------------------------------------------------------ pull (olah)


def test_pull_branch_tag_and_commit(hub_env):
    c0, c1 = hub_env["commits"][0], hub_env["commits"][1]
    main = hub.pull(REPO)
    assert (main.commit, main.revision) == (c1, "main")
    assert main.path == hub.Path(constants.HF_HUB_CACHE) / "models--jsqa-test--tiny" / "snapshots" / c1
    assert sorted(p.name for p in main.path.iterdir()) == ["config.json", "model.safetensors"]
    assert (main.path.parents[1] / "refs" / "main").read_text() == c1
    assert hub.pull(f"{REPO}@v1").commit == c0
    assert hub.pull(f"{REPO}@{c0}").path.name == c0
    wav = synth_speech(1.0)
    m0, m1 = load_model(f"{REPO}@v1"), load_model(REPO)
    assert m0.name == f"{REPO}@v1"
    assert _score(m0, wav) == pytest.approx(_score(load_model(hub_env["root"] / "seed0"), wav), abs=1e-6)
    assert _score(m0, wav) != pytest.approx(_score(m1, wav), abs=1e-6)


def test_cached_commit_needs_no_network(hub_env):
    c0 = hub_env["commits"][0]
    hub.pull(f"{REPO}@{c0}")
    before = len(hub_env["double"].requests)
    assert hub.pull(f"{REPO}@{c0}").commit == c0
    assert len(hub_env["double"].requests) == before


def test_offline_uses_cache(hub_env, monkeypatch, make_audio):
    hub.pull(f"{REPO}@v1")
    _offline(monkeypatch)
    assert hub.resolve_hub_model(f"{REPO}@v1").name == hub_env["commits"][0]  # tag → commit from cached refs
    model = load_model(f"{REPO}@v1")
    assert 1.0 <= _score(model, synth_speech(0.5)) <= 5.0
    with pytest.raises(
        hub.OfflineNotCachedError,
        match=r"jsqa-test/tiny@main: not in the local cache and "
        r"HF_HUB_OFFLINE=1.*jsqa pull",
    ):
        load_model(f"{REPO}@main")
    result = runner.invoke(app, ["score", str(make_audio("a.wav")), "--model", f"{REPO}@v1", "-q", "-j", "0"])
    if result.exit_code != 2 or "No such command" not in result.output:  # scoring is another helper's command
        assert result.exit_code == 0, result.output
        assert f"{REPO}@v1" in result.stdout


def test_unreachable_endpoint_falls_back_to_cache(hub_env, monkeypatch):
    hub.pull(f"{REPO}@v1")
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{hub_server.free_port()}")  # nothing listens
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", constants.ENDPOINT + "/{repo_id}/resolve/{revision}/{filename}"
    )
    assert hub.pull(f"{REPO}@v1").commit == hub_env["commits"][0]
    with pytest.raises(hub.OfflineNotCachedError, match="cannot reach http://127.0.0.1:.* not in the local cache"):
        hub.pull(f"{REPO}@main")


def test_pull_errors_are_one_line(hub_env):
    with pytest.raises(hub.RepoNotFoundError, match="jsqa-test/missing: repository jsqa-test/missing not found"):
        hub.pull("jsqa-test/missing")
    with pytest.raises(hub.RevisionMissingError, match=r"revision 'v9' not found .*tags: v1"):
        hub.pull(f"{REPO}@v9")
    with pytest.raises(hub.NotAJSQAModelError, match="not a jsqa model .*bert"):
        hub.pull("jsqa-test/not-jsqa")
    result = runner.invoke(app, ["pull", f"{REPO}@v9"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "revision 'v9' not found" in result.stderr


def test_cli_pull_dest_models_and_info(hub_env, tmp_path):
    result = runner.invoke(app, ["pull", f"{REPO}@v1", "--dest", str(tmp_path / "copy")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "copy")
    assert hub_env["commits"][0] in result.stderr
    copied = tmp_path / "copy" / "model.safetensors"
    assert copied.is_file() and not copied.is_symlink()
    read_config(tmp_path / "copy")
    with pytest.raises(hub.NotAJSQAModelError):
        hub.pull("jsqa-test/not-jsqa")  # its files are now in the cache, but it is not listed below
    listing = json.loads(runner.invoke(app, ["models", "--json"]).stdout)
    cached = [m for m in listing if m["source"] == "cache"]
    assert [m["name"] for m in cached] == [f"{REPO}@v1"]
    assert cached[0]["commit"] == hub_env["commits"][0] and cached[0]["parameters"] > 0
    info = json.loads(runner.invoke(app, ["info", f"{REPO}@v1", "--json"]).stdout)
    assert info["commit"] == hub_env["commits"][0] and info["config"]["preset"] == "tiny"
    assert info["metadata"] == {"stage": "test", "seed": 0}
    table = runner.invoke(app, ["models"])
    assert table.exit_code == 0 and f"{REPO}@v1" in table.stdout


# ------------------------------------------------------------------------------------------------ push (double)


def _git_show(mirrors, repo_id, rev_path):
    return subprocess.run(
        ["git", "show", rev_path], cwd=hub_server.repo_dir(mirrors, repo_id), capture_output=True, check=True
    ).stdout


def test_push_needs_login(hub_env, tiny_model_dir, monkeypatch):
    double = hub_env["double"]
    before = len(double.requests)
    with pytest.raises(hub.NotLoggedInError, match="HF_TOKEN or run `hf auth login`"):
        hub.push(tiny_model_dir, "jsqa-test/nologin")
    assert len(double.requests) == before  # nothing was sent
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(hub.NotLoggedInError, match="rejected the token"):
        hub.push(tiny_model_dir, "jsqa-test/nologin")
    assert double.requests[-1]["auth"] == "bad"
    assert not hub_server.repo_dir(hub_env["mirrors"], "jsqa-test/nologin").exists()


def test_push_pull_score_round_trip(hub_env, tmp_path, monkeypatch, make_audio):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    double, mirrors = hub_env["double"], hub_env["mirrors"]
    folder = _tiny_folder(tmp_path / "model", 7, {"stage": "finetune", "data": "NISQA_TRAIN_SIM"})
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "metrics": [
                    {
                        "dataset": "NISQA_TEST_P501",
                        "level": "file",
                        "model": "x",
                        "n": 4,
                        "pcc": 0.5,
                        "srcc": 0.4,
                        "rmse": 0.9,
                        "mae": 0.8,
                    }
                ]
            }
        )
    )
    start = len(double.requests)
    res = hub.push(folder, "jsqa-test/pushed", private=True, tag="v1", message="first model")
    sent = double.requests[start:]
    assert res.commit_url == f"{double.url}/jsqa-test/pushed/commit/{res.commit}"
    assert sorted(res.files) == ["README.md", "config.json", "metrics.json", "model.safetensors"]
    assert all(r["auth"] == "ok" for r in sent if r["path"].startswith("/api/"))
    create = next(r for r in sent if r["path"] == "/api/repos/create")
    assert create["json"]["visibility"] == "private" or create["json"].get("private") is True
    commits = [r for r in sent if "/commit/" in r["path"]]
    assert len(commits) == 1  # one commit with everything
    ops = {line["value"]["path"]: line["key"] for line in commits[0]["json"] if line["key"] != "header"}
    assert ops == {"config.json": "file", "README.md": "file", "metrics.json": "file", "model.safetensors": "lfsFile"}
    assert commits[0]["json"][0]["value"]["summary"] == "first model"
    assert any(r["method"] == "PUT" and r["bytes"] == (folder / "model.safetensors").stat().st_size for r in sent)
    card = _git_show(mirrors, "jsqa-test/pushed", f"{res.commit}:README.md").decode()
    assert "library_name: jsqa" in card and "| NISQA_TEST_P501 | file | 4 | 0.500 |" in card

    pulled = hub.pull("jsqa-test/pushed@v1")
    assert pulled.commit == res.commit
    assert json.loads((pulled.path / "config.json").read_text()) == json.loads((folder / "config.json").read_text())
    assert (pulled.path / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    wav_path = make_audio("round.wav", seconds=1.5)
    try:
        from jsqa_cli.scoring import score_files
    except ImportError:
        score_files = None
    if score_files is not None:
        got = score_files([wav_path], load_model("jsqa-test/pushed@v1"), device="cpu")
        want = score_files([wav_path], load_model(folder), device="cpu")
        assert got["mos"].iloc[0] == pytest.approx(want["mos"].iloc[0], abs=1e-4)
    else:
        wav = synth_speech(1.5)
        assert _score(load_model("jsqa-test/pushed@v1"), wav) == pytest.approx(_score(load_model(folder), wav))

    # pushing the same folder again changes nothing; a branch push lands on that branch only
    again = hub.push(folder, "jsqa-test/pushed")
    assert again.commit == res.commit
    dev = hub.push(_tiny_folder(tmp_path / "model2", 8), "jsqa-test/pushed", revision="dev")
    assert dev.commit != res.commit and hub.pull("jsqa-test/pushed@dev").commit == dev.commit
    assert hub.pull("jsqa-test/pushed").commit == res.commit
    with pytest.raises(hub.HubError, match="tag 'v1' already exists"):
        hub.push(_tiny_folder(tmp_path / "model3", 9), "jsqa-test/pushed", tag="v1")


def test_push_keeps_or_regenerates_card(hub_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder = _tiny_folder(tmp_path / "carded", 3)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# My own card\n")
    kept = hub.push(folder, "jsqa-test/carded")
    assert kept.card == "kept"
    assert b"# My own card" in _git_show(hub_env["mirrors"], "jsqa-test/carded", f"{kept.commit}:README.md")
    regen = hub.push(folder, "jsqa-test/carded", card="regenerate")
    assert regen.card == "generated"
    assert b"## What it predicts" in _git_show(hub_env["mirrors"], "jsqa-test/carded", f"{regen.commit}:README.md")
    assert (folder / "README.md").read_text().startswith("---\nlicense: apache-2.0")  # the user's file is untouched


def test_cli_push_never_prints_the_token(hub_env, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder = _tiny_folder(tmp_path / "cli", 4)
    caplog.set_level("DEBUG")
    result = runner.invoke(app, ["push", str(folder), "jsqa-test/cli", "--tag", "v0.1", "-m", "from the cli"])
    assert result.exit_code == 2 and "-m" in result.output  # -m means --model everywhere; push has no model option
    result = runner.invoke(
        app, ["push", str(folder), "jsqa-test/cli", "--tag", "v0.1", "--commit-message", "from the cli"]
    )
    assert result.exit_code == 0, result.output
    commit = [r for r in hub_env["double"].requests if "/commit/" in r["path"]][-1]
    assert commit["json"][0]["value"]["summary"] == "from the cli"
    assert result.stdout.strip().startswith(f"{hub_env['url']}/jsqa-test/cli/commit/")
    assert "tag v0.1" in result.stderr
    assert TOKEN not in result.output and TOKEN not in caplog.text
    bad = runner.invoke(app, ["push", str(tmp_path / "nowhere"), "jsqa-test/cli"])
    assert bad.exit_code == 2 and "nowhere" in bad.stderr and TOKEN not in bad.output


def test_push_refuses_a_broken_folder(hub_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    folder = _tiny_folder(tmp_path / "broken", 5)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    before = len(hub_env["double"].requests)
    with pytest.raises(hub.ModelError, match="unreadable safetensors"):
        hub.push(folder, "jsqa-test/broken")
    assert len(hub_env["double"].requests) == before


# ------------------------------------------------------------------------------------------------ live Hub


@pytest.mark.live
@pytest.mark.skipif(
    not (os.environ.get("HF_TOKEN") and os.environ.get("JSQA_TEST_HUB_REPO")),
    reason="set HF_TOKEN and JSQA_TEST_HUB_REPO (a model repo you may write to) to run",
)
def test_live_push_pull(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    repo = os.environ["JSQA_TEST_HUB_REPO"]
    folder = _tiny_folder(tmp_path / "live", 11, {"stage": "test", "run": str(tmp_path.name)})
    res = hub.push(folder, repo, private=True, message="jsqa live test")
    pulled = hub.pull(f"{repo}@{res.commit}")
    assert (pulled.path / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
