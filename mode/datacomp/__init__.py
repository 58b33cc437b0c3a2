"""DataComp's tooling: download a pool, its baseline filters, the resharder, the submission bundle."""
