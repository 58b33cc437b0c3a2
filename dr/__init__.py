"""DataCompDR reinforcements: stored teacher embeddings, synthetic captions and augmentation replay.

Nothing here yet: this package is where the DataCompDR reader, the reproducible transforms and the
shard join will live (see DESIGN.md). It is declared now so the installed layout does not change later.
"""
