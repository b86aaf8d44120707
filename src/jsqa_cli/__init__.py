"""jsqa: speech quality (MOS) scoring with JND contrastive pretraining (JSQA)."""

__version__ = "0.2.0"
