"""training/ablation.sh end to end at toy size: every stage runs with the real CLI commands, finished runs are
skipped on a second call, and the report names the modes it ran."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from conftest import synth_speech

from jsqa_cli import pairs as P

REPO = Path(__file__).resolve().parents[1]


def _mos_split(root: Path, split: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        snr = rng.uniform(0, 30)
        x = synth_speech(1.2, seed=seed * 100 + i)
        x = x + rng.standard_normal(len(x)).astype(np.float32) * 0.3 * 10 ** (-snr / 20)
        (root / split).mkdir(parents=True, exist_ok=True)
        sf.write(str(root / split / f"{i}.flac"), x, 16_000)
        rows.append(dict(path=f"{split}/{i}.flac", mos=1 + snr / 30 * 3.5))
    pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)


def test_ablation_script_runs_every_stage(jnd_sources, tmp_path):
    out = tmp_path / "recipe"
    for pairing, folder in (("cross-source", "pairs"), ("same-source", "pairs-same")):
        P.make_pairs([jnd_sources / "speech"], [jnd_sources / "noise"], out / folder, num_pairs=16, seconds=1.0,
                     seed=0, pairing=pairing, val_fraction=0.25)
    for i, (split, n) in enumerate((("train", 8), ("val", 4), ("test", 4))):
        _mos_split(out / "mos", split, n, seed=i)
    env = {**os.environ, "OUT": str(out), "REPORT": str(tmp_path / "ablation.md"), "PRESET": "tiny",
           "PT_STEPS": "2", "PT_BATCH": "4", "FT_STEPS": "2", "FT_BATCH": "2", "SEEDS": "0", "JOBS": "2",
           "ONLY": "cross-jnd-proj same-jnd-proj", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = ["bash", str(REPO / "training" / "ablation.sh"), "pretrain", "finetune", "evaluate", "report"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]

    ab = out / "ablation"
    for name in ("cross-jnd-proj", "same-jnd-proj"):
        meta = json.loads((ab / f"pt-{name}" / "encoder" / "config.json").read_text())["metadata"]
        assert meta["pairing"] == ("same-source" if name.startswith("same") else "cross-source")
        assert meta["steps"] == 2
    for name in ("scratch", "cross-jnd-proj", "same-jnd-proj"):
        cfg = json.loads((ab / f"ft-{name}-s0" / "config.json").read_text())
        assert cfg["preset"] == "tiny" and cfg["metadata"]["validation"]["pcc"] is not None
    evaluated = [m["name"] for m in json.loads((ab / "eval-s0" / "metrics.json").read_text())["models"]]
    assert evaluated[0].endswith("ft-scratch-s0") and len(evaluated) == 3
    table = (tmp_path / "ablation.md").read_text()
    assert "`cross-jnd-proj`" in table and "`same-jnd-proj`" in table and "scratch (random init)" in table

    again = subprocess.run(cmd[:2] + ["pretrain", "finetune"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "jsqa pretrain" not in again.stdout and "jsqa finetune" not in again.stdout
