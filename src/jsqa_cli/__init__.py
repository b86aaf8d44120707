"""jsqa: speech quality (MOS) scoring with JND contrastive pretraining (JSQA)."""

__version__ = "0.3.0"
