"""The embedded toy pool: a DataComp-layout pool and evaluation tasks drawn on the fly, for demos and tests."""
