"""Run a command function under Hydra with the project's config tree."""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig


def conf_dir() -> Path:
    """The config tree: ``conf/`` of a source checkout, else the copy shipped in the wheel."""
    here = Path(__file__).resolve().parents[2] / "conf"
    if (here / "config.yaml").is_file():
        return here
    return Path(str(resources.files("rpa_bench") / "_conf"))


def run_hydra(prog: str, task: Callable[[DictConfig], int | None], argv: list[str],
              extra_overrides: tuple[str, ...] = ()) -> int:
    """Call ``task(cfg)`` through ``hydra.main`` so overrides, ``-m`` and launchers work."""
    import hydra

    result: dict[str, int | None] = {}

    def _task(cfg: DictConfig) -> None:
        result["rc"] = task(cfg)

    _task.__name__ = prog.replace(" ", "_").replace("-", "_")
    saved = sys.argv
    sys.argv = [prog, *extra_overrides, *argv]
    try:
        hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(_task)()
    finally:
        sys.argv = saved
    return int(result.get("rc") or 0)


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose the config without running anything (tests, library helpers)."""
    from hydra import compose as _compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return _compose(config_name="config", overrides=list(overrides))
