"""ml_collections configs: `--config=configs/NAME.py[:variant]`."""
