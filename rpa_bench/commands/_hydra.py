"""Run a command function under Hydra with the project's config tree."""

from __future__ import annotations

import datetime
import hashlib
import sys
from collections.abc import Callable
from typing import Any
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

MAX_JOB_DIR = 120  # characters of a sweep job's folder name (a path component has 255 bytes)


def job_dir(override_dirname: str, num: int) -> str:
    """A sweep job's folder: its overrides (Hydra's override_dirname), shortened with a hash
    when too long for a file name, and the job number when there are none."""
    name = str(override_dirname) or f"job{num}"
    if len(name) <= MAX_JOB_DIR:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:MAX_JOB_DIR - 10]}~{digest}"


def run_name() -> str:
    """A run's default folder name: its experiment (or ``run``) and the local time."""
    experiment = None
    try:
        from hydra.core.hydra_config import HydraConfig

        experiment = HydraConfig.get().runtime.choices.get("experiment")
    except (ImportError, ValueError):  # composed outside a Hydra app: no choices to read
        pass
    return f"{experiment or 'run'}-{datetime.datetime.now():%Y%m%d-%H%M%S}"


SERVING_DEFAULT = "tpu7x"  # the paper's device


def serving_device(device_name: str) -> str:
    """The device whose peaks time a trace's simulated serving steps: the device group's
    accelerator, or TPU7x (the paper's) when the group is ``auto`` or the CPU (a CPU run
    still simulates the traffic a TPU server would batch)."""
    return SERVING_DEFAULT if str(device_name) in ("auto", "cpu") else str(device_name)


for _name, _fn in (("rpa_bench_job_dir", job_dir),  # conf/config.yaml's hydra.sweep.subdir
                   ("rpa_bench_run_name", run_name),  # conf/config.yaml's run.name
                   ("rpa_bench_serving_device", serving_device)):  # conf/scheduler/default.yaml
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


def container(node: Any) -> Any:
    """A DictConfig / ListConfig as plain, resolved Python containers (anything else as is)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) or OmegaConf.is_list(node) else node


def compose_entries(group: str, entries: Any, fallback: DictConfig, task: list[str],
                    composer: Callable[..., DictConfig]) -> list[dict]:
    """Each listed ``conf/<group>`` entry composed by Hydra with the run's other overrides
    (``task``); ``composer``: Hydra's ``compose`` inside a running app, else :func:`compose_root`.

    A ``<group>=...`` / ``<group>.field=...`` override on the command line wins over an
    experiment's list: ``experiment=paper_decode kernel=rpa_v3 kernel.source=...`` measures
    that one kernel. ``run.kernels: all`` lists every declared kernel (the registry's order), so
    an experiment over the whole family follows the declarations.
    """
    if group == "kernel" and isinstance(entries, str):
        if entries != "all":
            raise ValueError(f"run.kernels={entries!r}; allowed: a list of conf/kernel names or 'all'")
        from rpa_bench.kernels.registry import BACKENDS  # imports JAX: commands like capture import this module

        entries = list(BACKENDS)
    explicit = any(o.lstrip("+~").startswith((f"{group}=", f"{group}.")) for o in task)
    if entries is None or explicit:
        return [container(fallback)]
    base = [o for o in task if not o.lstrip("+~").startswith(f"run.{group}")]
    out = []
    for item in container(entries):
        over = {}
        if isinstance(item, dict):
            item = dict(item)
            name = item.pop("use", None)
            over = item
            if not name:
                raise ValueError(f"run.{group} entry {item} needs 'use: <conf/{group} name>'")
        else:
            name = str(item)
        try:
            cfg = composer(config_name="config", overrides=[*base, f"{group}={name}"])
        except Exception as exc:  # hydra's MissingConfigException and friends
            raise ValueError(f"run.{group}: cannot compose {group}={name!r}: {exc}") from None
        entry = container(cfg[group])
        entry.update(over)
        out.append(entry)
    return out


def compose_root(config_name: str = "config", overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Hydra's ``compose`` signature over :func:`compose` (outside a running Hydra app)."""
    assert config_name == "config"
    return compose(overrides)


def compose_run(overrides: list[str]) -> tuple[dict, list[dict], list[dict], str]:
    """Outside a Hydra app: what ``rpa-bench run <overrides>`` would plan (config, workload
    entries, kernel entries, experiment), for commands that drive the run pipeline."""
    cfg = compose(overrides)
    from hydra.core.hydra_config import HydraConfig

    experiment = HydraConfig.get().runtime.choices.get("experiment") or "adhoc"
    config = container(cfg)
    workloads = compose_entries("workload", cfg.run.get("workloads"), cfg.workload, list(overrides), compose_root)
    kernels = compose_entries("kernel", cfg.run.get("kernels"), cfg.kernel, list(overrides), compose_root)
    config["composed"] = {"workloads": workloads, "kernels": kernels}
    return config, workloads, kernels, str(experiment)


def conf_dir() -> Path:
    """The config tree: ``conf/`` of a source checkout, else the copy shipped in the wheel."""
    here = Path(__file__).resolve().parents[2] / "conf"
    if (here / "config.yaml").is_file():
        return here
    return Path(str(resources.files("rpa_bench") / "_conf"))


def group_choices(group: str) -> list[str]:
    """The options of a config group (``conf/<group>/*.yaml``), sorted; [] when no such group."""
    folder = conf_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def check_group_choices(argv: list[str]) -> str | None:
    """A one-line error for ``group=value`` naming an option that does not exist, else None.

    Hydra itself accepts an unknown option of an ``optional`` group (``experiment=nosuch``
    ran the defaults) and reports other unknown options with a traceback; checked here
    first. Sweeps (``a,b``) and ``null`` are checked per value.
    """
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if "." in key or "/" in key or not (conf_dir() / key).is_dir():
            continue  # a field, hydra's own group, or not a group
        choices = group_choices(key)
        for v in value.split(","):
            v = v.strip()
            if v in ("null", "") or v.startswith(("choice(", "range(", "glob(")):
                continue
            if v not in choices:
                return f"{key}={v!r} unknown; available: {', '.join(choices)}"
    return None


JSON_OUTPUT = False  # set by run_hydra from a --json flag (not a Hydra override)


def fail(prog: str, message: str, *, rc: int = 2, as_json: bool | None = None) -> int:
    """A command's failure: one line on stderr, and with ``--json`` a JSON object with the
    error on stdout (one rule for every command that takes ``--json``)."""
    import json

    print(f"{prog}: {message}", file=sys.stderr)
    if JSON_OUTPUT if as_json is None else as_json:
        print(json.dumps({"error": message, "exit": rc}))
    return rc

GROUP_HELP = {
    "experiment": "a paper table or trace study as overrides (sets workloads, kernels, mesh)",
    "model": "attention shape: heads, head_dim, dtypes (per device shard)",
    "kernel": "the kernel when one is measured (run.kernels lists several)",
    "workload": "the batches: paper sweeps, batch-spec strings, synthetic, serving traces",
    "scheduler": "continuous-batching simulation of traces (token budget, pages, sampling)",
    "device": "whose peaks MBU/MFU divide by (auto: the attached device)",
    "timing": "the timing protocol (samples, warm-up, capture, interleaving, compiler options)",
    "mesh": "how a call is split over devices (data, model axes)",
    "scale": "full (the paper's shapes) or cpu_smoke (reduced, runs on a CPU)",
    "lower": "rpa-bench lower: generations and batch shape",
    "compile": "rpa-bench compile: generations, cases, timeout",
    "tune": "rpa-bench tune: phases, target generation, search (halving), budgets",
    "traffic": "rpa-bench traffic: target generation, observation in interpret mode, output folder",
}


def help_text(prog: str, doc: str | None) -> str:
    """A tool's help: what the command does (its docstring), then the config groups with a
    line each and their options, then how to see the whole resolved config."""
    lines = [f"usage: {prog} [group=option ...] [key=value ...] [-m sweep]", ""]
    if doc:
        lines += [doc.strip(), ""]
    lines.append("config groups (group=option):")
    for group in sorted(GROUP_HELP):
        options = group_choices(group)
        if options:
            lines.append(f"  {group:<11} {GROUP_HELP[group]}")
            lines.append(f"  {'':<11} options: {', '.join(options)}")
    lines += ["", "--json: print JSON for machines (run: the summary at the end; check: every record)",
              "any field: key=value (e.g. timing.num_samples=20, run.name=mine); the resolved config:",
              f"  {prog} <overrides> --cfg job        (Hydra; --info for search paths)",
              "docs: README.md, docs/running.md (protocol, store), docs/columns.md (stored columns)"]
    return "\n".join(lines)


def run_hydra(prog: str, task: Callable[[DictConfig], int | None], argv: list[str],
              extra_overrides: tuple[str, ...] = (), doc: str | None = None) -> int:
    """Call ``task(cfg)`` through ``hydra.main`` so overrides, ``-m`` and launchers work."""
    import hydra

    if argv and argv[0] in ("-h", "--help"):
        print(help_text(prog, doc))
        return 0
    global JSON_OUTPUT
    JSON_OUTPUT = "--json" in argv  # machine output instead of tables (run: summary, check: records)
    argv = [a for a in argv if a != "--json"]
    problem = check_group_choices(argv)
    if problem:
        return fail(prog, problem)

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

    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = _compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    # as in a Hydra app: the choices (e.g. the experiment that names run.name) are readable
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
