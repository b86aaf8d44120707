"""``jsqa push`` and ``jsqa pull``: share models through the Hugging Face Hub (logic in ``jsqa_cli.hub``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from jsqa_cli.commands._common import console, err_console, fail, one_line_errors

# Help texts: one source line per paragraph would pass 120 columns, so paragraphs are built from adjacent strings
# (a newline inside one would show as a line break). Square brackets are escaped: rich would take them for markup.
PUSH_HELP = (
    "Upload a model folder to the Hugging Face Hub in one commit.\n\n"
    "Uploads config.json, model.safetensors, a README.md model card (generated from the model's metadata and "
    "evaluation, or the folder's own README.md) and metrics.json when present. Creates the repo if needed. The token "
    "comes from HF_TOKEN or `hf auth login`; it is never printed.\n\n"
    'Example: jsqa push runs/finetune/model me/jsqa-nisqa --tag v1.0 --commit-message "NISQA fine-tune"\n'
)

PULL_HELP = (
    "Download a model from the Hugging Face Hub into the local cache and check that it loads.\n\n"
    "MODEL is ORG/NAME or ORG/NAME@REVISION (a branch, tag or commit). Prints the local folder and the commit. After "
    "a pull, `--model ORG/NAME\\[@REVISION]` works offline too (HF_HUB_OFFLINE=1).\n\n"
    "Example: jsqa pull me/jsqa-nisqa@v1.0 --dest models/nisqa\n"
)


def register(app: typer.Typer) -> None:
    @app.command("push", help=PUSH_HELP, no_args_is_help=True)
    @one_line_errors
    def push(
        model_dir: Path = typer.Argument(
            ..., help="Model folder (config.json + model.safetensors).", show_default=False
        ),
        repo_id: str = typer.Argument(..., help="Hub repo, ORG/NAME.", show_default=False),
        private: bool = typer.Option(False, "--private", help="Create the repo as private (if it is new)."),
        revision: Optional[str] = typer.Option(
            None, "--revision", help="Branch to commit to (created if new; default main)."
        ),
        tag: Optional[str] = typer.Option(None, "--tag", help="Tag the new commit, e.g. v1.0."),
        message: Optional[str] = typer.Option(
            None, "--commit-message", help="Commit message (default: Upload jsqa model (FOLDER))."
        ),
        card: str = typer.Option(
            "keep", "--card", help="keep: use MODEL_DIR/README.md if it exists; regenerate: always write a new card."
        ),
        license: Optional[str] = typer.Option(
            None, "--license", help="Licence id for the card (default: the model's metadata, else mit)."
        ),
        metrics: Optional[Path] = typer.Option(
            None, "--metrics", help="metrics.json from `jsqa evaluate` (default: MODEL_DIR/metrics.json)."
        ),
    ) -> None:
        from jsqa_cli import hub

        if card not in ("keep", "regenerate"):
            fail(f"--card {card!r}: choose keep or regenerate")
        result = hub.push(
            model_dir,
            repo_id,
            private=private,
            revision=revision,
            tag=tag,
            message=message,
            card=card,
            license=license,
            metrics_path=metrics,
        )
        err_console.print(
            f"Pushed {', '.join(result.files)} to {result.repo_id} ({result.revision}"
            f"{', tag ' + result.tag if result.tag else ''}; model card {result.card})",
            highlight=False,
        )
        console.print(result.commit_url, highlight=False)

    @app.command("pull", help=PULL_HELP, no_args_is_help=True)
    @one_line_errors
    def pull(
        model: str = typer.Argument(..., help="ORG/NAME\\[@REVISION] (a branch, tag or commit).", show_default=False),
        dest: Optional[Path] = typer.Option(
            None, "--dest", "-d", help="Also copy the files into this folder (plain files)."
        ),
    ) -> None:
        from jsqa_cli import hub

        result = hub.pull(model, dest=dest)
        err_console.print(f"{result.name} → commit {result.commit}", highlight=False)
        console.print(str(result.path), highlight=False)
