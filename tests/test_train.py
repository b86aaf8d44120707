"""The shared training loop (jsqa_cli.train) on a toy regression task: clipping (0 = off), intervals of 0, option
checks, --stop-after then --resume (the same weights as one run), the run-folder rule, weight-decay groups."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from jsqa_cli import train as T
from jsqa_cli.distributed import Dist


@dataclass
class Opts:
    """The options train() reads, as PretrainOptions and FinetuneOptions spell them."""

    steps: int | None = 12
    warmup_steps: int | None = 1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    log_every: int = 1
    eval_every: int = 4
    checkpoint_every: int = 0
    patience: int = 0
    stop_after: int | None = None
    resume: bool = False
    overwrite: bool = False
    workers: int | None = 0
    seed: int = 0
    bf16: bool = False
    quiet: bool = True


class Toy(T.Task):
    """y = 3·x₀ − 2·x₁ + 1 through two linear layers with dropout between (dropout draws from the global RNG,
    so exact resume must restore it); batches drawn from (seed, step): the same from any starting step."""

    name, items, metric, higher_is_better = "toy", "rows", "val_mse", False

    def __init__(self, lr: float = 0.1):
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.05), nn.Linear(8, 1))
        self.lr, self.saved = lr, []

    def param_groups(self):
        return T.param_groups(self.model, {"encoder": self.lr}, weight_decay=0.01)

    @staticmethod
    def _data(seed: int, n: int = 16):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 2, generator=g)
        return x, 3 * x[:, 0] - 2 * x[:, 1] + 1

    def batches(self, step):
        while True:
            yield self._data(1000 + step)
            step += 1

    def forward(self, batch, step):
        self.model.train()
        return self.model(batch[0]).squeeze(-1)

    def loss(self, pred, batch):
        return nn.functional.mse_loss(pred, batch[1]), len(pred)

    def evaluate(self, step):
        self.model.eval()
        x, y = self._data(7, 64)
        with torch.no_grad():
            return {"val_mse": float(nn.functional.mse_loss(self.model(x).squeeze(-1), y))}

    def save_best(self, step, record):
        self.saved.append(step)


def _run(tmp_path, name: str, task: Toy | None = None, **opts):
    task = task or Toy()
    o = Opts(**opts)
    T.check_options(o)
    result = T.train(task, o, Dist(), tmp_path / name, o.steps, o.warmup_steps)
    return task, result


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_grad_clip_0_is_off_and_the_model_learns(tmp_path):
    start = _weights(Toy().model)
    task, result = _run(tmp_path, "r", grad_clip=0.0)
    assert result.finished and result.step == 12
    assert all(not torch.equal(a, b) for a, b in zip(start, _weights(task.model)))  # every tensor moved
    records = T.read_metrics(tmp_path / "r")
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 12 and losses[-1] < 0.5 * losses[0]
    val = [r["val_mse"] for r in records if "val_mse" in r]
    assert val[-1] < 0.5 * val[0]
    assert all(r["grad_norm"] > 0 for r in records if "loss" in r)  # the norm is still logged


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("grad_clip", -1.0, "--grad-clip -1.0: give a positive gradient-norm limit, or 0 for no clipping"),
        ("grad_clip", float("nan"), "--grad-clip nan"),
        ("steps", 0, "--steps 0: train at least 1 step"),
        ("steps", -3, "--steps -3"),
        ("log_every", -1, "--log-every -1: must not be negative (0: off)"),
        ("eval_every", -5, "--eval-every -5"),
        ("checkpoint_every", -1, "--checkpoint-every -1"),
        ("patience", -1, "--patience -1"),
        ("warmup_steps", -1, "--warmup-steps -1"),
        ("stop_after", 0, "--stop-after 0: stop after at least 1 step"),
        ("workers", -1, "--workers -1"),
        ("weight_decay", -0.1, "--weight-decay -0.1"),
    ],
)
def test_option_checks_are_one_line(field, value, message):
    with pytest.raises(ValueError) as err:
        T.check_options(Opts(**{field: value}))
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="choose one"):
        T.check_options(Opts(resume=True, overwrite=True))


def test_intervals_of_0_are_off(tmp_path):
    _, result = _run(tmp_path, "off", log_every=0, eval_every=0, checkpoint_every=0)
    records = T.read_metrics(tmp_path / "off")
    assert not [r for r in records if "loss" in r]  # no loss lines
    assert [r["step"] for r in records if "val_mse" in r] == [12]  # validated once, at the last step
    assert (tmp_path / "off" / T.CHECKPOINT_NAME).is_file() and result.best_step == 12


def test_stop_after_then_resume_gives_the_weights_of_one_run(tmp_path):
    whole, _ = _run(tmp_path, "whole")
    part, first = _run(tmp_path, "part", stop_after=5)
    assert first.step == 5 and not first.finished
    assert T.load_checkpoint(tmp_path / "part", Toy().model, restore_rng=False)["step"] == 5
    part, second = _run(tmp_path, "part", stop_after=5, resume=True)
    assert second.step == 10 and not second.finished
    part, last = _run(tmp_path, "part", resume=True)
    assert last.step == 12 and last.finished
    assert all(torch.equal(a, b) for a, b in zip(_weights(whole.model), _weights(part.model)))
    steps = [r["step"] for r in T.read_metrics(tmp_path / "part") if "loss" in r]
    assert steps == list(range(1, 13))


def test_early_stopping_counts_validations_without_improvement(tmp_path):
    task, result = _run(tmp_path, "es", task=Toy(lr=0.0), eval_every=1, patience=2)
    assert result.early_stopped and result.finished and result.step == 3 and result.best_step == 1
    assert task.saved == [1]


def test_one_rule_for_an_existing_run_folder(tmp_path):
    d, run = Dist(), tmp_path / "run"
    kw = dict(artefacts=("checkpoint.pt", "metrics.jsonl", "encoder"), checkpoint="checkpoint.pt", what="test run", d=d)
    assert T.prepare_run_folder(run, resume=False, overwrite=False, **kw) == run  # new: fine
    with pytest.raises(FileNotFoundError, match="checkpoint.pt: no checkpoint to resume from"):
        T.prepare_run_folder(run, resume=True, overwrite=False, **kw)
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    T.prepare_run_folder(run, resume=False, overwrite=False, **kw)  # a folder without a run: fine
    (run / "checkpoint.pt").write_bytes(b"x")
    (run / "encoder").mkdir()
    with pytest.raises(ValueError, match="already holds a test run; --resume continues it, --overwrite starts again"):
        T.prepare_run_folder(run, resume=False, overwrite=False, **kw)
    T.prepare_run_folder(run, resume=True, overwrite=False, **kw)  # continues: nothing removed
    assert (run / "checkpoint.pt").exists()
    T.prepare_run_folder(run, resume=False, overwrite=True, **kw)
    assert not (run / "checkpoint.pt").exists() and not (run / "encoder").exists()
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files go
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="exists and is not a folder"):
        T.prepare_run_folder(tmp_path / "file", resume=False, overwrite=False, **kw)


def test_weight_decay_on_weights_not_on_biases_or_norms():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Conv1d(4, 2, 3))
    groups = T.param_groups(
        model,
        {"encoder": 1e-3, "head": 1e-2},
        lambda name: "head" if name.startswith("2.") else "encoder",
        weight_decay=0.1,
    )
    by = {(g["name"], g["weight_decay"]): {id(p) for p in g["params"]} for g in groups}
    assert by[("encoder", 0.1)] == {id(model[0].weight)}
    assert by[("encoder", 0.0)] == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    assert by[("head", 0.1)] == {id(model[2].weight)} and by[("head", 0.0)] == {id(model[2].bias)}
    assert all(g["lr"] == (1e-2 if g["name"] == "head" else 1e-3) for g in groups)


def _imports(module: str) -> set[str]:
    """The jsqa_cli modules that ``module`` imports anywhere in its source (at the top or inside functions)."""
    import ast
    from pathlib import Path

    import jsqa_cli

    path = Path(jsqa_cli.__file__).parent / f"{module}.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jsqa_cli."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("jsqa_cli.")}
    return found


def test_imports_flow_one_way_through_training_and_evaluation():
    """labels and the metrics (evaluate) import no training code; the training core imports no method module;
    pretrain and finetune import the core, never each other's loop or the reverse."""
    assert not _imports("labels")
    assert not _imports("evaluate") & {"finetune", "pretrain", "train"}
    assert not _imports("train") & {"finetune", "pretrain", "evaluate", "labels", "pairs"}
    assert "train" in _imports("pretrain") and "train" in _imports("finetune")
    assert "finetune" not in _imports("pretrain") and "pretrain" not in _imports("finetune")
