"""A run's plan: the resolved config as frozen, validated dataclasses (no Hydra here).

``rpa-bench run`` composes the config (``run.workloads`` / ``run.kernels`` lists are
composed from ``conf/workload`` / ``conf/kernel`` by the command), turns it into plain
dicts and calls :func:`plan_from_config`. Everything that can be wrong in a config is
refused here, before any array is allocated, with a ``ValueError`` naming the field.

Scale (``conf/scale``): ``full`` keeps the configured shapes; ``cpu_smoke`` merges its
``model`` and per-workload-kind ``workload`` overrides into the configs (fewer heads,
fewer and shorter sequences) and is recorded in the manifest and in every row.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rpa_bench.kernels.generations import generation_kind
from rpa_bench.measure.timing import TimingConfig
from rpa_bench.typed import check_value
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

INTERPRET_CHOICES = ("auto", True, False)


@dataclasses.dataclass(frozen=True)
class ScaleSpec:
    """``conf/scale/*.yaml``: how big a sweep is, and limits that keep CPU runs sane."""

    name: str
    reduced: bool
    model: Mapping[str, Any]  # merged into the model config
    scheduler: Mapping[str, Any]  # merged into the scheduler config (trace workloads)
    workload: Mapping[str, Mapping[str, Any]]  # workload kind (or name) -> overrides
    cpu_max_call_flops: float  # refuse a point above this on CPU (would take hours)
    cpu_max_input_bytes: float  # refuse a point whose inputs exceed this on CPU
    interpret_max_kv_token_heads: int  # sum(kv_lens) * h_kv above this: no interpret check

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ScaleSpec":
        d = dict(d)
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ValueError(f"scale: unknown field(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
        missing = sorted(allowed - set(d))
        if missing:
            raise ValueError(f"scale: missing field(s) {missing}")
        for f in ("cpu_max_call_flops", "cpu_max_input_bytes", "interpret_max_kv_token_heads"):
            if not d[f] or d[f] <= 0:
                raise ValueError(f"scale.{f}={d[f]!r} must be > 0")
        return cls(name=str(d["name"]), reduced=bool(d["reduced"]), model=dict(d["model"] or {}),
                   scheduler=dict(d["scheduler"] or {}),
                   workload={k: dict(v or {}) for k, v in (d["workload"] or {}).items()},
                   cpu_max_call_flops=float(d["cpu_max_call_flops"]),
                   cpu_max_input_bytes=float(d["cpu_max_input_bytes"]),
                   interpret_max_kv_token_heads=int(d["interpret_max_kv_token_heads"]))

    def workload_overrides(self, name: str, kind: str) -> dict:
        """Overrides for one workload: by kind first, then by name (more specific wins)."""
        out = dict(self.workload.get(kind, {}))
        out.update(self.workload.get(name, {}))
        return out


@dataclasses.dataclass(frozen=True)
class KernelEntry:
    name: str  # the backend (conf/kernel name)
    source: str | None
    options: Mapping[str, Any]
    interpret: Any  # "auto" | True | False
    config: Mapping[str, Any]  # the kernel group config as composed
    label: str = ""  # what rows call it (default: name); two entries of one backend need two labels
    compiler_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # per executable

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)


@dataclasses.dataclass(frozen=True)
class WorkloadEntry:
    name: str
    kind: str
    config: Mapping[str, Any]  # after scale overrides


@dataclasses.dataclass(frozen=True)
class RunPlan:
    experiment: str
    run_name: str
    results_dir: Path
    workloads: tuple[WorkloadEntry, ...]
    kernels: tuple[KernelEntry, ...]
    model_name: str
    model: ModelSpec
    attention: AttentionSpec
    scheduler: Mapping[str, Any]
    timing: TimingConfig
    scale: ScaleSpec
    device: Mapping[str, Any]
    mesh: Mapping[str, Any]
    seed: int
    max_points: int | None  # per workload; None: all
    compile_only: str | None = None  # a TPU generation's device kind: compile for it, run nothing

    @property
    def run_dir(self) -> Path:
        return self.results_dir / self.run_name


def _merge(base: Mapping[str, Any], over: Mapping[str, Any], *, keep: frozenset[str] = frozenset(),
           prefix: str = "") -> dict:
    """``over`` merged into ``base``, except the dotted paths in ``keep`` (what the user set
    explicitly: a preset never overrides it)."""
    out = dict(base)
    for k, v in over.items():
        path = f"{prefix}{k}"
        if path in keep:
            continue
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v, keep=keep, prefix=path + ".")
        else:
            out[k] = v
    return out


@dataclasses.dataclass(frozen=True)
class Explicit:
    """What the user set explicitly (dotted paths below each node): scale presets leave them alone."""

    model: frozenset[str] = frozenset()
    scheduler: frozenset[str] = frozenset()
    workloads: tuple[frozenset[str], ...] = ()  # one per workload entry, in order


KERNEL_ENTRY_KEYS = ("name", "source", "options", "interpret", "label", "compiler_options")
SAFE_NAME = re.compile(r"[A-Za-z0-9_.=-]{1,120}")


def kernel_entry(cfg: Mapping[str, Any]) -> KernelEntry:
    cfg = dict(cfg)
    name = cfg.get("name")
    if not name:
        raise ValueError("kernel.name is missing (each conf/kernel/*.yaml names its backend)")
    unknown = sorted(set(cfg) - set(KERNEL_ENTRY_KEYS))
    if unknown:
        raise ValueError(f"kernel entry {name}: unknown key(s) {unknown}; allowed: use, "
                         f"{', '.join(KERNEL_ENTRY_KEYS)} (options go under options:)")
    interpret = cfg.get("interpret", "auto")
    if interpret not in INTERPRET_CHOICES:
        raise ValueError(f"kernel={name}: interpret={interpret!r}; allowed: auto, true, false")
    label = str(cfg.get("label") or name)
    if not SAFE_NAME.fullmatch(label):
        raise ValueError(f"kernel entry {name}: label={label!r}; allowed: letters, digits and . _ = -")
    return KernelEntry(name=str(name), source=cfg.get("source"), options=dict(cfg.get("options") or {}),
                       interpret=interpret, config=cfg, label=label,
                       compiler_options=compiler_options(cfg.get("compiler_options"), f"kernel entry {label}"))


def compiler_options(value: Any, where: str) -> dict:
    """Per-executable XLA compiler options (``compile(compiler_options=...)``): flag -> scalar."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: compiler_options={value!r} must be a mapping of flag -> value")
    out = {}
    for k, v in value.items():
        if not isinstance(v, (str, int, float, bool)):
            raise ValueError(f"{where}: compiler_options.{k}={v!r} must be a string, number or bool")
        out[str(k)] = v
    return out


def workload_entry(cfg: Mapping[str, Any], scale: ScaleSpec, explicit: frozenset[str] = frozenset()) -> WorkloadEntry:
    cfg = dict(cfg)
    name, kind = cfg.get("name"), cfg.get("kind")
    if not name or not kind:
        raise ValueError(f"workload: 'name' and 'kind' are required (got name={name!r}, kind={kind!r})")
    if not SAFE_NAME.fullmatch(str(name)) or str(name) in (".", ".."):
        raise ValueError(f"workload.name={name!r}: a folder name under the run is made from it; allowed: "
                         "letters, digits and . _ = - (not '.' or '..')")
    return WorkloadEntry(name=str(name), kind=str(kind),
                         config=_merge(cfg, scale.workload_overrides(name, kind), keep=explicit))


def plan_from_config(
    cfg: Mapping[str, Any],
    *,
    workloads: list[Mapping[str, Any]],
    kernels: list[Mapping[str, Any]],
    experiment: str,
    explicit: Explicit = Explicit(),
) -> RunPlan:
    """Validate the resolved config (plain dicts) into a :class:`RunPlan`. ``explicit``: what
    the command line set; the scale preset fills in everything else."""
    scale = ScaleSpec.from_dict(cfg["scale"])
    model_cfg = _merge(dict(cfg["model"]), scale.model, keep=explicit.model)
    model_name = str(model_cfg.get("name", "model"))
    model = ModelSpec.from_dict(model_cfg)
    attn_cfg = dict(cfg.get("attention") or {})
    allowed = {f.name for f in dataclasses.fields(AttentionSpec)}
    unknown = sorted(set(attn_cfg) - allowed)
    if unknown:
        raise ValueError(f"attention: unknown field(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
    attention = AttentionSpec(**attn_cfg)
    run = dict(cfg.get("run") or {})
    max_points = check_value("run", "max_points", run.get("max_points"), int | None)
    seed = check_value("", "seed", cfg.get("seed", 0), int)
    if max_points is not None and int(max_points) < 1:
        raise ValueError(f"run.max_points={max_points} must be >= 1 or null")
    compile_only = run.get("compile_only")
    if compile_only is not None:

        try:
            compile_only = generation_kind(str(compile_only))
        except ValueError as exc:
            raise ValueError(f"run.compile_only: {exc}") from None
    if not workloads:
        raise ValueError("run.workloads is empty: name at least one conf/workload entry")
    if not kernels:
        raise ValueError("run.kernels is empty: name at least one conf/kernel entry")
    keeps = list(explicit.workloads) + [frozenset()] * (len(workloads) - len(explicit.workloads))
    wl = tuple(workload_entry(w, scale, keep) for w, keep in zip(workloads, keeps))
    names = [w.name for w in wl]
    if len(set(names)) != len(names):
        raise ValueError(f"run.workloads names a workload twice: {names}")
    ks = tuple(kernel_entry(k) for k in kernels)
    aa = check_value("run", "aa_check", run.get("aa_check", False), bool)
    if aa:  # each entry twice, interleaved: the in-run A/A check of the host's noise
        ks = ks + tuple(dataclasses.replace(k, label=f"{k.label}.aa") for k in ks)
    knames = [k.label for k in ks]
    if len(set(knames)) != len(knames):
        raise ValueError(f"run.kernels names a kernel twice: {knames}; give each entry its own label "
                         "({use: rpa_v3, label: mine, source: ...})")
    return RunPlan(
        experiment=experiment,
        run_name=str(run.get("name")),
        results_dir=Path(str(run.get("results_dir", "results"))),
        workloads=wl,
        kernels=ks,
        model_name=model_name,
        model=model,
        attention=attention,
        scheduler=_merge(dict(cfg.get("scheduler") or {}), scale.scheduler, keep=explicit.scheduler),
        timing=TimingConfig.from_dict(cfg["timing"]),
        scale=scale,
        device=dict(cfg.get("device") or {}),
        mesh=dict(cfg.get("mesh") or {}),
        seed=seed,
        max_points=None if max_points is None else int(max_points),
        compile_only=compile_only,
    )
