"""Training: one recipe through open_clip_train (recipe), MoDE's runs via submitit (launch), its logs (trainlog)."""
