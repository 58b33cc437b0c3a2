"""DataCompDR reinforcements: stored teacher embeddings, synthetic captions and augmentation replay.

- `dr.transforms`: augmentations whose random parameters are recorded in DataCompDR's `paug.json`
  layout and replay bit-exactly (configs in configs/dr_augment_*.json).
- `dr.sample`: decode, validate and pick one stored reinforcement of a sample (bad samples counted by reason).
- `dr.join`: merge image-text shards with reinforcement-only shards by sample key (`mode dr-join`).
- `dr.generate`: write reinforcements for a pool with frozen open_clip teachers (`mode dr-generate`).

Training on them goes through the plugin (open_clip_patch.dr_data, dr_train, loss.DRClipLoss).
"""
