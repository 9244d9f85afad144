"""``rpa-bench check``: every kernel against the reference on small ragged batches.

    rpa-bench check                         # every kernel the registry knows
    rpa-bench check kernel=rpa_v3           # only RPA v3 (its conf/kernel options apply)
    rpa-bench check kernel=rpa_v3 model=llama3_8b_hd256 attention.soft_cap=30
    rpa-bench check kernel=rpa_v3_hd64 check.cases=upstream   # tpu-inference's own test inputs

Cases keep the configured model's head_dim and q/KV head ratio with few heads (see
:mod:`rpa_bench.kernels.cases`); Pallas kernels run in interpret mode off TPU. Prints one
row per (kernel, case) and exits 1 when any kernel is incorrect or failed, 2 when an
explicitly requested kernel cannot run the configured model at all (before compiling).
"""

from __future__ import annotations

import dataclasses
import sys
import warnings

import jax
from omegaconf import DictConfig, OmegaConf

from rpa_bench.commands import _hydra
from rpa_bench.commands._hydra import run_hydra
from rpa_bench.kernels.base import KernelBackend, KernelOutput
from rpa_bench.kernels.cases import CHECK_DTYPES, CheckCase, check_cases, padded_sizes
from rpa_bench.kernels.checking import (
    FAILED,
    SKIPPED,
    CheckRecord,
    check_in_worker,
    check_on_inputs,
    summary_ok,
    tolerance_for,
)
from rpa_bench.kernels.isolated import IsolatedCalls, WorkerDied, WorkerTimedOut
from rpa_bench.kernels.reference import reference_attention
from rpa_bench.kernels.registry import BACKENDS, KernelConfig, PALLAS_BACKENDS, kernel_config_from_dict
from rpa_bench.kernels.upstream_cases import SKIPPED_UPSTREAM, as_check_case, upstream_inputs
from rpa_bench.status import CHECK_STATUSES
from rpa_bench.workloads.materialize import KernelInputs
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

CASE_SETS = ("ours", "upstream", "all")

# write nothing: no run folder, no .hydra copy, no log file
NO_OUTPUT = (
    "hydra.output_subdir=null",
    "hydra.run.dir=.",
    "hydra/job_logging=disabled",
    "hydra/hydra_logging=disabled",
)
COLUMNS = (("kernel", 10), ("case", 16), ("dtype", 23), ("max_abs_err", 11), ("tolerance", 9), ("status", 9))


def main(argv: list[str] | None = None) -> int:
    return run_hydra("rpa-bench check", task, list(argv or []), extra_overrides=NO_OUTPUT, doc=__doc__)


def model_spec(cfg_model: DictConfig) -> ModelSpec:
    """The attention fields of ``cfg.model`` (other fields feed the step-time model)."""
    fields = {f.name for f in dataclasses.fields(ModelSpec)}
    return ModelSpec(**{k: v for k, v in OmegaConf.to_container(cfg_model, resolve=True).items() if k in fields})


def attention_spec(cfg_attention: DictConfig) -> AttentionSpec:
    return AttentionSpec(**OmegaConf.to_container(cfg_attention, resolve=True))


def kernel_overridden() -> bool:
    """Whether the command line picked a kernel (``kernel=NAME``)."""
    from hydra.core.hydra_config import HydraConfig

    return any(o.split("=", 1)[0].lstrip("+~") == "kernel" for o in HydraConfig.get().overrides.task)


def resolve_interpret(kc: KernelConfig, platform: str) -> bool:
    if kc.interpret in (True, False):
        return bool(kc.interpret)
    return kc.name in PALLAS_BACKENDS and platform != "tpu"


def _row(values: tuple) -> str:
    return "  ".join(f"{str(v):<{w}}" for v, (_, w) in zip(values, COLUMNS))


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def print_record(r: CheckRecord) -> None:
    note = f"  {r.message}" if r.message else ""
    print(_row((r.kernel, r.case, r.dtype, _fmt(r.max_abs_err), _fmt(r.tolerance), r.status)) + note, flush=True)


def describe(model: ModelSpec, cases: tuple[CheckCase, ...], platform: str) -> str:
    shapes = padded_sizes(cases[0].batch.page_size)
    heads = sorted({(c.model.num_q_heads, c.model.num_kv_heads) for c in cases})
    lines = [
        f"check shapes: model {model.name} (h_q={model.num_q_heads}, h_kv={model.num_kv_heads}, "
        f"head_dim={model.head_dim}) -> heads {', '.join(f'{q}:{kv}' for q, kv in heads)}, "
        f"head_dim={model.head_dim}, page_size={cases[0].batch.page_size}",
        f"  padded to {shapes['max_num_batched_tokens']} tokens, {shapes['max_num_seqs']} sequences, "
        f"{shapes['num_pages']} pages ({shapes['pages_per_seq']} per sequence); platform {platform}",
    ]
    seen = set()
    for c in cases:
        key = (c.batch.q_lens, c.batch.kv_lens)
        if key not in seen:
            seen.add(key)
            chunk = f" chunk_prefill_size={c.batch.chunk_prefill_size}" if c.batch.chunk_prefill_size else ""
            lines.append(f"  {c.name:<16} q_lens={list(c.batch.q_lens)} kv_lens={list(c.batch.kv_lens)}{chunk}")
    return "\n".join(lines)


def targets(cfg: DictConfig, explicit: bool) -> list[KernelConfig]:
    configured = kernel_config_from_dict(OmegaConf.to_container(cfg.kernel, resolve=True))
    if explicit:
        return [configured]
    return [configured if name == configured.name else KernelConfig(name=name) for name in BACKENDS]


# what usually ends a check's worker: XLA's CPU compile of an interpreted kernel running out of
# memory (batched RPA in bfloat16 takes 10-14 GB for one small case)
_WHY = "; an interpreted kernel's XLA CPU compile can need more memory than the machine has"


def run_checks(kernels: list[tuple[KernelConfig, KernelBackend]], cases, *,
               platform: str, on_record=print_record, isolated: IsolatedCalls | None = None) -> list[CheckRecord]:
    """Every (kernel, case); each case's inputs and reference are made once and shared.
    ``cases``: the cases, or a function backend -> its cases (kernels that need their own page size).
    ``isolated``: interpret-mode cases run there, one worker process at a time (a worker that
    dies or passes its limit is that case's ``failed`` record; the next case gets a new one)."""
    shared: dict[str, tuple[KernelInputs, KernelOutput]] = {}
    records = []
    for kc, backend in kernels:
        available, reason = backend.availability()
        if not available:
            records.append(CheckRecord(kc.name, "-", "-", SKIPPED, message=reason))
            on_record(records[-1])
            continue
        for case in (cases(backend) if callable(cases) else cases):
            key = f"{case.name}/{case.dtype_label}/{case.batch.page_size}"
            own_kc, own = kc, backend
            try:
                if case.kernel_options:  # the case's own options (an upstream test's explicit block sizes)
                    own_kc = dataclasses.replace(kc, options={**kc.options, **dict(case.kernel_options)})
                    own = own_kc.backend()
                own.validate(case.model, case.attn, case.batch)
            except ValueError as e:
                record = CheckRecord(kc.name, case.name, case.dtype_label, SKIPPED,
                                     tolerance=tolerance_for(case.model), message=str(e))
            else:
                interpret = resolve_interpret(kc, platform)
                if isolated is not None and interpret:
                    try:  # the worker makes the inputs and the reference itself (small: cheap beside the kernel)
                        record = isolated.call(check_in_worker, own_kc.to_dict(), case, interpret)
                    except (WorkerDied, WorkerTimedOut) as e:
                        record = CheckRecord(kc.name, case.name, case.dtype_label, FAILED,
                                             tolerance=tolerance_for(case.model), message=f"the check {e}"
                                             + (_WHY if isinstance(e, WorkerDied) else " (check.timeout_s)"))
                else:
                    if key not in shared:
                        inputs = case.materialize()
                        shared[key] = (inputs, jax.block_until_ready(reference_attention(inputs, case.attn)))
                    inputs, ref = shared[key]
                    record = check_on_inputs(own, inputs, case.attn, interpret=interpret, case=case.name,
                                             reference=ref)
            records.append(record)
            on_record(record)
    return records


def task(cfg: DictConfig) -> int:
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    platform = jax.devices()[0].platform
    explicit = kernel_overridden()
    section = cfg.get("check") or {}
    which = str(section.get("cases", "ours"))
    if which not in CASE_SETS:
        print(f"rpa-bench check: check.cases={which!r}; allowed: {', '.join(CASE_SETS)}", file=sys.stderr)
        return 2
    dtypes = section.get("dtypes")
    dtypes = None if dtypes is None else ([dtypes] if isinstance(dtypes, str) else list(dtypes))
    if dtypes is not None and (not dtypes or set(dtypes) - set(CHECK_DTYPES)):
        print(f"rpa-bench check: check.dtypes={dtypes}; allowed: a list of {', '.join(CHECK_DTYPES)} or null",
              file=sys.stderr)
        return 2
    isolate = section.get("isolate", True)
    if isolate not in (True, False):
        print(f"rpa-bench check: check.isolate={isolate!r}; allowed: true, false", file=sys.stderr)
        return 2
    timeout = section.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        print(f"rpa-bench check: check.timeout_s={timeout!r}; allowed: a number of seconds > 0, or null (no limit)",
              file=sys.stderr)
        return 2
    try:
        model = model_spec(cfg.model)
        attn = attention_spec(cfg.attention)
        kernels = []
        for kc in targets(cfg, explicit):
            backend = kc.backend()
            if explicit:  # refuse before compiling anything
                available, reason = backend.availability()
                if not available:
                    raise ValueError(f"kernel={kc.name} unavailable: {reason}")
                if which != "upstream":  # upstream's inputs carry their own shapes, not the model's
                    backend.validate(model, attn, None)
            kernels.append((kc, backend))
    except ValueError as e:
        print(f"rpa-bench check: {e}", file=sys.stderr)
        return 2

    cases = check_cases(model, attention=attn, seed=int(cfg.seed))
    own_pages = {}  # page size -> cases, for kernels whose layout needs page-size multiples (stacked RPA: 128)

    def ours(backend: KernelBackend) -> tuple[CheckCase, ...]:
        multiple = getattr(backend.capabilities, "page_size_multiple", None)
        page = cases[0].batch.page_size
        if not multiple or page % multiple == 0:
            return cases
        if multiple not in own_pages:
            own_pages[multiple] = check_cases(model, attention=attn, seed=int(cfg.seed), page_size=multiple)
        return own_pages[multiple]

    def cases_for(backend: KernelBackend) -> tuple[CheckCase, ...]:
        mine = ours(backend) if which in ("ours", "all") else ()
        if which in ("upstream", "all"):
            mine += tuple(as_check_case(u, seed=int(cfg.seed)) for u in upstream_inputs(backend.name))
        return tuple(c for c in mine if dtypes is None or c.model.dtype in dtypes)

    as_json = _hydra.JSON_OUTPUT
    if not as_json:
        shown = ours(kernels[0][1]) if explicit else cases  # the explicit kernel's own page size
        if which != "upstream":
            print(describe(model, shown, platform))
        if which != "ours":
            for kc, backend in kernels:
                n = len(upstream_inputs(backend.name))
                print(f"  {kc.name}: {n} upstream test input(s)" + ("" if n else " (upstream has no test of it)")
                      + (f"; upstream skips: {'; '.join(SKIPPED_UPSTREAM[backend.name])}"
                         if backend.name in SKIPPED_UPSTREAM else ""))
        for kc, backend in ([] if explicit or which == "upstream" else kernels):
            own = ours(backend)
            if own is not cases:
                print(f"  {kc.name}: the same cases at page_size={own[0].batch.page_size} (its layout's multiple)")
        print(_row(tuple(name for name, _ in COLUMNS)), flush=True)
    with IsolatedCalls(timeout_s=timeout) as isolated:
        records = run_checks(kernels, cases_for, platform=platform,
                             on_record=(lambda r: None) if as_json else print_record,
                             isolated=isolated if isolate else None)
    counts = {str(s): sum(r.status == s for r in records) for s in CHECK_STATUSES}
    if as_json:
        import dataclasses
        import json

        print(json.dumps({"platform": platform, "counts": counts,
                          "records": [dataclasses.asdict(r) for r in records]}, indent=1, default=str))
    else:
        print(", ".join(f"{n} {s}" for s, n in counts.items()))
    if not summary_ok(records):
        wrong = sorted({r.kernel for r in records if not r.passed})
        print(f"rpa-bench check: kernel(s) {', '.join(wrong)} disagree with the reference or fail", file=sys.stderr)
        return 1
    return 0
