"""CLI commands. Only this layer sees Hydra's DictConfig; library code takes dataclasses."""
