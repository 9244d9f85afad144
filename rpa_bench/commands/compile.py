"""``rpa-bench compile``: compile each Pallas RPA kernel for real TPU generations, offline.

libtpu's compile-only client compiles for a TPU topology on a machine without a TPU. With
no ``kernel=`` override every Pallas backend (rpa_v3, rpa_v2, jax_rpa) is compiled with its
defaults for each generation and case; ``kernel=rpa_v3 kernel.source=/path@ref`` compiles
one revision (its provenance goes into ``--json`` rows). Prints a table: status (ok /
vmem_oom / hbm_oom / failed / timeout / skipped), compile seconds, VMEM used by the largest
Mosaic kernel against the generation's VMEM and the kernel's own estimate, the HBM
footprint, and (``compile.schedule=true``) static bundle counts. Exit 0 when every compile
is ok (or skipped because libtpu is absent), 1 when any did not compile or fit, 2 on bad
config. Knobs: ``compile.generations=[tpu7x] compile.cases=[decode_8x1k] compile.timeout_s=60``.
Compiling is not timing: nothing here is kernel performance.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rpa_bench.commands import _hydra
from rpa_bench.commands._hydra import run_hydra
from rpa_bench.commands.lower import kernel_was_chosen
from rpa_bench.engine import engine_from_dict
from rpa_bench.generations import COMPILABLE, generation_kind, generation_kinds
from rpa_bench.kernels.registry import PALLAS_BACKENDS, fitting, kernel_config_from_dict
from rpa_bench.paths import output_folder_problem
from rpa_bench.workloads.batch import RaggedBatch
from rpa_bench.workloads.model import AttentionSpec, ModelSpec

EXTRA_OVERRIDES = (
    "+compile=default",
    "hydra.output_subdir=null",
    "hydra.run.dir=.",
    "hydra/job_logging=disabled",
    "hydra/hydra_logging=disabled",
)
PAGE_SIZE = 256


def case_batches(names: list[str]) -> dict:
    """Case name -> (batch, padding kwargs for abstract inputs)."""
    from rpa_bench.kernels.lowering import lowering_batch  # imports JAX: loaded when the command runs

    def serving_mixed():
        # a serving engine's mixed step: 224 decodes (contexts 512..8K) + 32 prefill chunks of
        # 56 tokens = 2016 tokens, padded as an engine pads: 2048 tokens, 256 sequences, a page
        # table of 128 pages per sequence (32K max model length); the page pool holds the pages used
        q = [1] * 224 + [56] * 32
        kv = [512 + (397 * i) % 7680 for i in range(224)] + [56 + 256 * i for i in range(32)]
        batch = RaggedBatch.ordered(q, kv, page_size=PAGE_SIZE)
        return batch, {"max_num_batched_tokens": 2048, "max_num_seqs": 256, "pages_per_seq": 128,
                       "num_pages": batch.num_pages + 1}

    known = {
        "lower": lambda: (lowering_batch(PAGE_SIZE, chunk_prefill_size=PAGE_SIZE), {}),
        "decode_8x1k": lambda: (RaggedBatch.ordered([1] * 8, [1024] * 8, page_size=PAGE_SIZE), {}),
        "paper_decode": lambda: (RaggedBatch.ordered([1] * 128, [8192] * 128, page_size=PAGE_SIZE), {}),
        "paper_prefill": lambda: (RaggedBatch.ordered([8192], [8192], page_size=PAGE_SIZE), {}),
        "serving_mixed": serving_mixed,
    }
    names = [str(n) for n in names]
    if not names:
        raise ValueError(f"compile.cases is empty; allowed: [all] or a list of {', '.join(known)}")
    if "all" in names and len(names) > 1:
        raise ValueError(f"compile.cases={names}: 'all' stands alone ([all]); or list cases from {', '.join(known)}")
    if names == ["all"]:
        names = list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"compile.cases: {', '.join(map(repr, unknown))} unknown; allowed: all, {', '.join(known)}")
    return {n: known[n]() for n in dict.fromkeys(names)}


def jobs_for(cfg: DictConfig, *, all_pallas: bool) -> list:
    from rpa_bench.kernels.compiling import CompileJob  # imports JAX: loaded when the command runs

    model = ModelSpec.from_dict(OmegaConf.to_container(cfg.model, resolve=True))
    attn = AttentionSpec(**OmegaConf.to_container(cfg.attention, resolve=True))
    comp = cfg.compile
    if not list(comp.generations):
        raise ValueError(f"compile.generations is empty; allowed: a list of {', '.join(COMPILABLE)}")
    try:
        gens = generation_kinds(list(comp.generations), compilable=True)
    except ValueError as exc:
        raise ValueError(f"compile.generations: {exc}") from None
    if not isinstance(comp.schedule, bool):
        raise ValueError(f"compile.schedule={comp.schedule!r}; allowed: true, false")
    chosen = OmegaConf.to_container(cfg.kernel, resolve=True)
    kernel_config_from_dict(chosen)  # refuse unknown keys before any compile
    if all_pallas:  # every Pallas kernel that takes this model (the others say why not)
        names, refused = fitting(PALLAS_BACKENDS, model, attn)
        for name, why in refused.items():
            print(f"rpa-bench compile: {name} not compiled: {why}", file=sys.stderr)
        kernels = [{"name": n} for n in names]
    else:
        kernels = [chosen]
    for k in kernels:
        backend = kernel_config_from_dict(k).backend()
        ok, reason = backend.availability()
        if not ok:
            raise ValueError(f"kernel={k['name']}: not available: {reason}")
    cases = case_batches(list(comp.cases))
    return [CompileJob(k, k["name"], model, attn, batch, g, case, bool(comp.schedule), padding)
            for k in kernels for g in gens for case, (batch, padding) in cases.items()]


class CompileLog:
    """``<compile.out>/compile.jsonl``: one line per finished compile, keyed by the job (kernel
    config, model, attention, batch, generation, case), appended on the driver as each result
    arrives; read back so a rerun skips what is there. A line cut short by a kill is ignored."""

    def __init__(self, folder: str | None) -> None:
        self.path = None if folder in (None, "") else Path(str(folder)) / "compile.jsonl"
        self.seen: dict[str, dict] = {}
        if self.path is None:
            return
        problem = output_folder_problem(str(folder), "compile.out")
        if problem:
            raise ValueError(problem)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            text = self.path.read_text()
            if text and not text.endswith("\n"):  # a line a kill cut short: the next one starts fresh
                with self.path.open("a") as f:
                    f.write("\n")
            for line in text.splitlines():
                try:
                    rec = json.loads(line)
                    self.seen[rec["key"]] = rec["result"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    @staticmethod
    def key(job) -> str:
        import dataclasses
        import hashlib

        parts = [job.kernel, job.label, dataclasses.asdict(job.model), dataclasses.asdict(job.attn),
                 job.batch.to_dict(), generation_kind(job.generation), job.case, job.padding, job.schedule]
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, job):
        from rpa_bench.kernels.compiling import CompileResult  # imports JAX: loaded when the command runs

        rec = self.seen.get(self.key(job)) if self.path else None
        if rec is None:
            return None
        fields = {f for f in CompileResult.__dataclass_fields__}
        return CompileResult(**{k: v for k, v in rec.items() if k in fields})

    def add(self, job, result) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:  # one line per result: a kill loses at most the line being written
            f.write(json.dumps({"key": self.key(job), "result": result.as_dict()}, default=str) + "\n")
            f.flush()


def format_table(results: list) -> str:
    import pandas as pd

    frame = pd.DataFrame([r.to_row() for r in results])
    frame["error"] = frame["error"].str.slice(0, 110)
    if frame["bundles"].isna().all():
        frame = frame.drop(columns=["bundles"])
    frame = frame.astype(object).where(frame.notna(), "-")  # no None / NaN in the table
    return frame.to_string(index=False)


def task(cfg: DictConfig) -> int:
    from rpa_bench.kernels.compiling import Eta, compile_many, libtpu_status  # imports JAX: loaded when the command runs

    as_json = bool(cfg.compile.json) or _hydra.JSON_OUTPUT  # --json, or compile.json=true
    try:
        try:
            timeout = float(cfg.compile.timeout_s)
        except (TypeError, ValueError):
            raise ValueError(f"compile.timeout_s={cfg.compile.timeout_s!r}: a number of seconds > 0") from None
        if not timeout > 0:
            raise ValueError(f"compile.timeout_s={cfg.compile.timeout_s!r} must be > 0")
        jobs = jobs_for(cfg, all_pallas=not kernel_was_chosen())
    except (ValueError, TypeError) as err:
        return _hydra.fail("rpa-bench compile", str(err), as_json=as_json)
    ok, reason = libtpu_status()
    if not ok:
        print(f"rpa-bench compile: skipped: {reason}", file=sys.stderr)

    workers = cfg.compile.get("workers")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        return _hydra.fail("rpa-bench compile", f"compile.workers={workers!r}: an integer >= 1, or null (every core)",
                           as_json=as_json)
    eta = Eta(len(jobs))

    def progress(r) -> None:
        line = eta.done()
        if not as_json:
            print(f"  {r.kernel:<8} {r.generation:<12} {r.case:<14} {r.status:<8} {r.compile_s:6.1f} s   {line}",
                  file=sys.stderr, flush=True)

    try:
        engine = engine_from_dict(OmegaConf.to_container(cfg.engine, resolve=True) if "engine" in cfg else None)
        log = CompileLog(cfg.compile.get("out"))
    except (ValueError, TypeError) as err:
        return _hydra.fail("rpa-bench compile", str(err), as_json=as_json)
    done = {i: r for i, j in enumerate(jobs) if (r := log.get(j)) is not None}
    if done and not as_json:
        print(f"rpa-bench compile: {len(done)} of {len(jobs)} already in {log.path} (not compiled again)",
              file=sys.stderr)
    todo = [j for i, j in enumerate(jobs) if i not in done]
    eta = Eta(len(todo))

    def record(r) -> None:
        log.add(todo_by_label.pop((r.kernel, r.generation, r.case)), r)
        progress(r)

    todo_by_label = {(j.label, generation_kind(j.generation), j.case): j for j in todo}
    fresh = compile_many(todo, timeout_s=timeout, progress=record, workers=workers, engine=engine)
    fresh_iter = iter(fresh)
    results = [done[i] if i in done else next(fresh_iter) for i in range(len(jobs))]
    if as_json:
        print(json.dumps([r.as_dict() for r in results], indent=1, default=str))
    else:
        print(format_table(results))
    bad = [r for r in results if r.status not in ("ok", "skipped")]
    if not as_json:
        summary = ", ".join(f"{s}={sum(r.status == s for r in results)}" for s in sorted({r.status for r in results}))
        print(f"{len(results)} compiles ({summary}); compile-only: these prove fit, not speed")
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    return run_hydra("rpa-bench compile", task, argv, extra_overrides=EXTRA_OVERRIDES, doc=__doc__)
