"""Plumbing every step shares: errors, devices, the hub, on-disk layout, shard specs and tar I/O, uids, the
per-shard runner and its locks. Imports nothing else of the project."""
