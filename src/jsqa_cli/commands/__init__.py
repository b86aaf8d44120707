"""One module per command group; each defines ``register(app)``. See ``jsqa_cli/cli.py``."""
