"""Names → model folders (jsqa_cli.resolve): bundled names, folders, Hub ids, $JSQA_MODEL, one-line errors.
The Hub itself is exercised in test_hub.py against a local server."""

from __future__ import annotations

import pytest

from jsqa_cli import model, resolve


def test_folder_as_given_and_default_from_env(tiny_model_dir, monkeypatch, tmp_path):
    got = resolve.resolve(tiny_model_dir)
    assert (got.name, got.path, got.source, got.commit) == (str(tiny_model_dir), tiny_model_dir, "folder", None)
    monkeypatch.chdir(tiny_model_dir.parent)
    assert resolve.resolve(tiny_model_dir.name).name == tiny_model_dir.name  # relative: named as given
    monkeypatch.setenv("JSQA_MODEL", str(tiny_model_dir))
    assert resolve.default_model_name() == str(tiny_model_dir)
    assert resolve.resolve().path == tiny_model_dir == resolve.resolve_model()
    monkeypatch.setenv("JSQA_MODEL", str(tmp_path / "gone"))
    with pytest.raises(resolve.ModelError, match="gone: no such model folder"):
        resolve.resolve()


def test_bundled_names_win(monkeypatch, tmp_path):
    bundled = resolve.bundled_models()
    if not bundled:
        pytest.skip("no bundled model in this checkout")
    name = next(iter(bundled))
    (tmp_path / name).mkdir()  # a folder of the same name in the working directory
    monkeypatch.chdir(tmp_path)
    got = resolve.resolve(name)
    assert (got.name, got.path, got.source) == (name, bundled[name], "bundled")


@pytest.mark.parametrize(
    "name,is_hub",
    [
        ("org/name", True),
        ("org/name@v1", True),
        ("org/name@refs/pr/1", True),
        ("name", False),
        ("./org/name", False),
        ("/abs/path", False),
        ("~/x/y", False),
        ("a/b/c", False),
        ("../x", False),
        ("org/", False),
    ],
)
def test_hub_id_shape(name, is_hub):
    assert resolve.looks_like_hub_id(name) is is_hub


def test_errors_are_one_line_model_errors(tiny_model_dir, tmp_path):
    with pytest.raises(resolve.ModelError, match="not a file"):
        resolve.resolve(tiny_model_dir / "config.json")
    with pytest.raises(resolve.ModelError, match="no such model folder, bundled model") as err:
        resolve.resolve(tmp_path / "nowhere")
    assert "\n" not in str(err.value)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("[1, 2]")
    with pytest.raises(resolve.ModelError, match="not a jsqa model"):
        resolve.read_config_dict(tmp_path / "bad")


def test_one_set_of_error_classes():
    """model and hub re-export resolve's classes: catching model.ModelError catches the Hub's errors too."""
    from jsqa_cli import hub

    assert model.ModelError is resolve.ModelError is hub.ModelError
    assert issubclass(hub.HubError, model.ModelError) and hub.OfflineNotCachedError is resolve.OfflineNotCachedError
    assert model.resolve_model is resolve.resolve_model and model.DEFAULT_MODEL == resolve.DEFAULT_MODEL
