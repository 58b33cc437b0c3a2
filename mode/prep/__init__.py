"""MoDE's data preparation, in pipeline order: captions -> embed -> cluster (bkmeans) -> assign -> route (ooc)."""
