"""A run's plan: the resolved config as frozen, validated dataclasses (no Hydra here).

``rpa-bench run`` composes the config (``run.workloads`` / ``run.kernels`` lists are
composed from ``conf/workload`` / ``conf/kernel`` by the command), turns it into plain
dicts and calls :func:`plan_from_config`. Everything that can be wrong in a config is
refused here, before any array is allocated, with a ``ValueError`` naming the field.

Scale (``conf/scale``): Hydra composes the preset into the config (``full`` keeps the
configured shapes; ``cpu_smoke`` shrinks the scheduler and, through
``conf/scale_workload``, each workload), so what reaches the plan is already scaled and
the command line has already won; the preset's name and CPU limits are recorded in the
manifest and in every row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rpa_bench.kernels.generations import generation_kind
from rpa_bench.kernels.registry import SAFE_LABEL, KernelConfig, kernel_config_from_dict
from rpa_bench.measure.timing import TimingConfig
from rpa_bench.generations import BY_KIND
from rpa_bench.roofline.metrics import PEAK_SOURCES
from rpa_bench.roofline.specs import listed_device_spec
from rpa_bench.typed import check_value, from_dict
from rpa_bench.workloads.model import AttentionSpec, ModelSpec
from rpa_bench.workloads.workload_spec import WorkloadSpec, workload_spec_from_dict
from rpa_bench.workloads.scheduler_spec import SchedulerSpec


@dataclasses.dataclass(frozen=True)
class ScaleSpec:
    """``conf/scale/*.yaml``'s ``scale`` node: the preset's name and limits that keep CPU runs sane."""

    name: str
    reduced: bool
    trace_max_requests: int | None  # read by the trace workloads' configs (interpolation)
    cpu_max_call_flops: float  # refuse a point above this on CPU (would take hours)
    cpu_max_input_bytes: float  # refuse a point whose inputs exceed this on CPU
    interpret_max_kv_token_heads: int  # sum(kv_lens) * h_kv above this: no interpret check

    def __post_init__(self) -> None:
        for f in ("cpu_max_call_flops", "cpu_max_input_bytes", "interpret_max_kv_token_heads"):
            if not getattr(self, f) > 0:
                raise ValueError(f"scale.{f}={getattr(self, f)!r} must be > 0")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ScaleSpec":
        return from_dict(cls, d, section="scale")


@dataclasses.dataclass(frozen=True)
class DeviceConfig:
    """``conf/device/*.yaml``: the device MBU / MFU divide by, and how."""

    name: str = "auto"
    num_devices: int | None = None  # JAX devices a measurement runs on; None: a whole chip
    peak_source: str = "datasheet"  # datasheet | calibrated
    calibration: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # rpa-bench calibrate's knobs

    def __post_init__(self) -> None:
        if self.peak_source not in PEAK_SOURCES:
            raise ValueError(f"device.peak_source={self.peak_source!r}; allowed: {', '.join(PEAK_SOURCES)}")
        if self.num_devices is not None and self.num_devices < 1:
            raise ValueError(f"device.num_devices={self.num_devices} must be >= 1 or null")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DeviceConfig":
        return from_dict(cls, d, section="device")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """``conf/mesh/*.yaml``: the device mesh; a null axis fills one chip of the device kind
    found at run time (:func:`rpa_bench.parallel.mesh.mesh_spec_from_config`)."""

    data: int | None = 1
    model: int | None = 1

    def __post_init__(self) -> None:
        for axis in ("data", "model"):
            value = getattr(self, axis)
            if value is not None and value < 1:
                raise ValueError(f"mesh.{axis}={value} must be >= 1 or null")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MeshConfig":
        return from_dict(cls, d, section="mesh")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class WorkloadEntry:
    name: str
    kind: str
    config: Mapping[str, Any]  # as composed (scale preset and overrides applied by Hydra)
    spec: WorkloadSpec | None = None  # the validated, typed workload (set by workload_entry)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    experiment: str
    run_name: str
    results_dir: Path
    workloads: tuple[WorkloadEntry, ...]
    kernels: tuple[KernelConfig, ...]
    model_name: str
    model: ModelSpec
    attention: AttentionSpec
    scheduler: SchedulerSpec
    timing: TimingConfig
    scale: ScaleSpec
    device: DeviceConfig
    mesh: MeshConfig
    seed: int
    max_points: int | None  # per workload; None: all
    compile_only: str | None = None  # a TPU generation's device kind: compile for it, run nothing
    unfit_kernels: str = "refuse"  # a kernel that cannot take the model: refuse the run | skip its rows

    @property
    def run_dir(self) -> Path:
        return self.results_dir / self.run_name


def target_generation(explicit: str | None, device_name: str, attached: str | None = None) -> str:
    """The TPU generation a command targets: the one named, else the ``device`` group's TPU,
    else the attached TPU, else TPU7x (the paper's)."""
    if explicit:
        return generation_kind(str(explicit))
    if device_name not in ("auto", "cpu"):
        spec = listed_device_spec(device_name)
        if spec.vendor == "google":
            kinds = [k for k in spec.device_kinds if k in BY_KIND]
            if kinds:
                return kinds[0]
    return generation_kind(attached or "tpu7x")


def workload_entry(cfg: Mapping[str, Any]) -> WorkloadEntry:
    cfg = dict(cfg)
    name, kind = cfg.get("name"), cfg.get("kind")
    if not name or not kind:
        raise ValueError(f"workload: 'name' and 'kind' are required (got name={name!r}, kind={kind!r})")
    if not SAFE_LABEL.fullmatch(str(name)) or str(name) in (".", ".."):
        raise ValueError(f"workload.name={name!r}: a folder name under the run is made from it; allowed: "
                         "letters, digits and . _ = - (not '.' or '..')")
    # validated here, with the rest of the plan, before any work (a bad field is one line)
    return WorkloadEntry(name=str(name), kind=str(kind), config=cfg, spec=workload_spec_from_dict(cfg))


def check_run_name(name: Any) -> str:
    """``run.name``: a folder under ``run.results_dir`` (sub-folders allowed, e.g. a sweep's
    ``name/job``); never the results folder itself, an absolute path or a climb out of it."""
    text = "" if name is None else str(name)
    parts = Path(text).parts
    if not text.strip() or Path(text).is_absolute() or any(p in ("..", ".") for p in parts) or not parts:
        raise ValueError(f"run.name={text!r}: a folder name under run.results_dir is required; allowed: letters, "
                         "digits and . _ = - (sub-folders with /), not empty, '.', '..', or an absolute path")
    return text


def plan_from_config(
    cfg: Mapping[str, Any],
    *,
    workloads: list[Mapping[str, Any]],
    kernels: list[Mapping[str, Any]],
    experiment: str,
) -> RunPlan:
    """Validate the resolved config (plain dicts) into a :class:`RunPlan`."""
    scale = ScaleSpec.from_dict(cfg["scale"])
    model_cfg = dict(cfg["model"])
    model_name = str(model_cfg.get("name", "model"))
    model = ModelSpec.from_dict(model_cfg)
    attention = from_dict(AttentionSpec, dict(cfg.get("attention") or {}), section="attention")
    run = dict(cfg.get("run") or {})
    max_points = check_value("run", "max_points", run.get("max_points"), int | None)
    seed = check_value("", "seed", cfg.get("seed", 0), int)
    if max_points is not None and int(max_points) < 1:
        raise ValueError(f"run.max_points={max_points} must be >= 1 or null")
    unfit = str(run.get("unfit_kernels", "refuse"))
    if unfit not in ("refuse", "skip"):
        raise ValueError(f"run.unfit_kernels={unfit!r}; allowed: refuse, skip")
    compile_only = run.get("compile_only")
    if compile_only is not None:
        try:
            compile_only = generation_kind(str(compile_only), compilable=True)
        except ValueError as exc:
            raise ValueError(f"run.compile_only: {exc}") from None
    if not workloads:
        raise ValueError("run.workloads is empty: name at least one conf/workload entry")
    if not kernels:
        raise ValueError("run.kernels is empty: name at least one conf/kernel entry")
    wl = tuple(workload_entry(w) for w in workloads)
    names = [w.name for w in wl]
    if len(set(names)) != len(names):
        raise ValueError(f"run.workloads names a workload twice: {names}")
    ks = tuple(kernel_config_from_dict(k) for k in kernels)
    aa = check_value("run", "aa_check", run.get("aa_check", False), bool)
    if aa:  # each entry twice, interleaved: the in-run A/A check of the host's noise
        ks = ks + tuple(dataclasses.replace(k, label=f"{k.label}.aa") for k in ks)
    knames = [k.label for k in ks]
    if len(set(knames)) != len(knames):
        raise ValueError(f"run.kernels names a kernel twice: {knames}; give each entry its own label "
                         "({use: rpa_v3, label: mine, source: ...})")
    return RunPlan(
        experiment=experiment,
        run_name=check_run_name(run.get("name")),
        results_dir=Path(str(run.get("results_dir", "results"))),
        workloads=wl,
        kernels=ks,
        model_name=model_name,
        model=model,
        attention=attention,
        scheduler=SchedulerSpec.from_dict(dict(cfg.get("scheduler") or {})),
        timing=TimingConfig.from_dict(cfg["timing"]),
        scale=scale,
        device=DeviceConfig.from_dict(dict(cfg.get("device") or {})),
        mesh=MeshConfig.from_dict(dict(cfg.get("mesh") or {})),
        seed=seed,
        max_points=None if max_points is None else int(max_points),
        compile_only=compile_only,
        unfit_kernels=unfit,
    )
