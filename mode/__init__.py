"""MoDE data experts for CLIP: DataComp tooling, caption clustering, expert training and ensembling."""

__version__ = "0.1.0"
