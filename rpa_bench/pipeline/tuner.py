"""The block-size tuner: compile pruning, successive halving over timed rungs, the answer.

:class:`Tuner` takes the typed plan (one kernel, one workload) and the ``tune`` section
(:class:`TuneConfig`), and writes ``tune.json``, ``env.txt`` and the HTML page to its
folder; the command only parses, calls and prints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax

from rpa_bench.kernels.generations import generation_kind
from rpa_bench import engine as eng
from rpa_bench.engine import engine_from_dict
from rpa_bench.kernels import compiling, tpu_target
from rpa_bench.kernels.cases import check_model
from rpa_bench.kernels.checking import check_on_inputs
from rpa_bench.kernels.tpu_target import attached_device_kind
from rpa_bench.workloads.materialize import materialize
from rpa_bench.workloads.materialize import padded_shape
from rpa_bench.kernels.registry import PALLAS_BACKENDS, KernelConfig, tuning
from rpa_bench.measure.compare import IMPROVED, WORSE, compare_kernels, summarize
from rpa_bench.pipeline import execute, prepare, run_folder, tune_space as tn
from rpa_bench.paths import output_folder_problem
from rpa_bench.pipeline.plan import RunPlan, target_generation
from rpa_bench.pipeline.point import cost_of
from rpa_bench.roofline.traffic import modelled_time_s
from rpa_bench.workloads.points import point_attention
from rpa_bench.generations import BY_KIND
from rpa_bench.reports.tune_report import write_tune_report
from rpa_bench.roofline.specs import listed_device_spec
from rpa_bench.status import Status
from rpa_bench.store.run_store import RunStore
from rpa_bench.workloads.batch import RaggedBatch

STRATEGIES = ("halving", "grid")
# how far the kernel's VMEM estimate may exceed the compiler's use before a candidate over
# VMEM by the estimate alone is no longer surely over it (measured: at most 1.096x)
ESTIMATE_MARGIN = 1.25
OUTPUT_ONLY = ("json", "out", "check_interpret")  # tune settings that change what is printed, not measured


@dataclasses.dataclass(frozen=True)
class Budget:
    compiles: int = 64
    device_s: float = 120.0


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """``conf/tune/default.yaml``."""

    phases: list | None = None
    generation: str | None = None
    strategy: str = "halving"
    eta: int = 3
    max_candidates: int = 12
    min_samples: int = 5
    budget: Budget = dataclasses.field(default_factory=Budget)
    compile_timeout_s: float = 180.0
    step_cost_us: float = 0.35  # off TPU: the modelled cost of one (query block, KV block) step
    compile_workers: int | None = None  # parallel compiles; None: every core, bounded by memory
    schedule: bool = True
    check_interpret: bool = True
    kv_quantiles: list | None = None
    out: str | None = None
    json: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.phases, str):  # tune.phases=decode: one phase, as a list
            object.__setattr__(self, "phases", [self.phases])
        if isinstance(self.kv_quantiles, (int, float)):
            object.__setattr__(self, "kv_quantiles", [self.kv_quantiles])
        for q in self.kv_quantiles or ():
            if not isinstance(q, (int, float)) or not 0.0 <= float(q) <= 1.0:
                raise ValueError(f"tune.kv_quantiles={list(self.kv_quantiles)}: each must be a number in [0, 1]")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"tune.strategy={self.strategy!r}; allowed: {', '.join(STRATEGIES)}")
        for name in ("eta", "max_candidates", "min_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"tune.{name}={getattr(self, name)} must be >= 1")
        if self.budget.compiles < 1 or not self.budget.device_s > 0:
            raise ValueError("tune.budget.compiles must be >= 1 and tune.budget.device_s > 0")
        for ph in self.phases or ():
            if ph not in tn.PHASES:
                raise ValueError(f"tune.phases: {ph!r} unknown; allowed: {', '.join(tn.PHASES)} (a list: "
                                 "tune.phases=[decode,mixed])")
        if self.generation is not None:
            generation_kind(self.generation, compilable=True)
        if not self.compile_timeout_s > 0:
            raise ValueError(f"tune.compile_timeout_s={self.compile_timeout_s} must be > 0")
        problem = output_folder_problem(self.out, "tune.out")
        if problem:
            raise ValueError(problem)


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)



class Tuner:
    def __init__(self, config: dict, tcfg: TuneConfig, plan: RunPlan, *, progress: bool = True) -> None:

        self.config, self.tcfg, self.plan, self.progress = config, tcfg, plan, progress
        self.kernel = plan.kernels[0]
        self.quiet = tcfg.json
        attached = attached_device_kind()
        self.on_tpu = attached is not None
        self.generation = target_generation(tcfg.generation, plan.device.name, attached)
        self.declared = tuning(self.kernel.name)  # the kernel's knobs, space and defaults
        self.pallas = self.kernel.name in PALLAS_BACKENDS  # compiled for a TPU (else XLA: runs here)
        self.timed_here = not self.pallas or self.on_tpu
        # what the answer is for: the TPU generation compiled / timed for, or (a kernel timed
        # off TPU, the reference) the device it was timed on
        self.target = self.generation if (self.on_tpu or not self.timed_here) else jax.devices()[0].device_kind
        self.out = Path(tcfg.out) if tcfg.out else plan.results_dir / "tune" / plan.run_name
        self.cache = tn.VerdictCache(plan.results_dir / "tune" / "verdicts.json")
        self.stats = {"compiles": 0, "cached_verdicts": 0, "rows_measured": 0}
        self.estimate_is_lower_bound = True
        self.engine = engine_from_dict(config.get("engine"))  # where the compile pruning runs

    # --- the flow ----------------------------------------------------------------------
    def run(self) -> int:

        t0 = time.perf_counter()
        # every check before any compile or measurement (off TPU rpa_v3 only compiles: the
        # plan is checked as a compile-only run for the target generation)
        check = self.plan if self.timed_here else dataclasses.replace(self.plan, compile_only=self.generation)
        ((entry, workload),) = prepare.prepare_run(check).workloads
        if self.plan.max_points is not None and len(workload.points) > self.plan.max_points:
            _say(f"rpa-bench tune: run.max_points={self.plan.max_points}: the first {self.plan.max_points} of "
                 f"{len(workload.points)} points", self.quiet)
            workload = dataclasses.replace(workload, points=list(workload.points)[: self.plan.max_points])
        self.entry, self.workload = entry, workload
        pairs = [(p.batch, workload.kind) for p in workload.points]
        exercised = tn.phases_in(pairs)
        phases = [ph for ph in (self.tcfg.phases or exercised) if ph in exercised]
        if not phases:
            raise ValueError(f"workload {entry.name} exercises none of the phases {self.tcfg.phases}")
        # phases that set the same knob of this kernel are tuned together, as the knob's case
        # (batched RPA: prefill and mixed sequences share one call; RPA v2: one pair for all)
        groups: dict[str, list[str]] = {}
        for ph in phases:
            groups.setdefault(self.declared.phase_case[ph], []).append(ph)
        self.units = {(group[0] if len(group) == 1 else case): group for case, group in groups.items()}
        phases = list(self.units)
        self.out.mkdir(parents=True, exist_ok=True)
        _say(f"rpa-bench tune: {self.kernel.name} on {entry.name} ({len(workload.points)} points), phases "
             f"{', '.join(phases)}; {'timed here' if self.timed_here else 'compile-only pruning (not timed here)'}; "
             f"folder {self.out}", self.quiet)
        results = {ph: self.tune_phase(ph, entry, workload) for ph in phases}
        summary = self.summary(entry, workload, results, time.perf_counter() - t0)
        (self.out / "tune.json").write_text(json.dumps(summary, indent=1, default=str))
        env = summary["env"]
        (self.out / "env.txt").write_text("".join(f"{line}\n" for line in env))  # what production reads
        (self.out / "exports.txt").write_text("".join(f"{line}\n" for line in summary["export_lines"]))

        page = write_tune_report(summary, self.out)
        if self.tcfg.json:
            print(json.dumps(summary, indent=1, default=str))
        else:
            print(format_summary(summary))
            print(f"\nfolder: {self.out}  (tune.json, env.txt, exports.txt, {page.name})")
        return 0

    def points_of(self, phase: str, workload: Any) -> list:
        group = getattr(self, "units", {}).get(phase, [phase])
        return [p for p in workload.points if any(tn.phase_of_point(p.batch, workload.kind, ph) for ph in group)]

    def case_of(self, phase: str) -> str:
        return self.declared.phase_case.get(phase, phase)

    def heuristic(self, phase: str, rep: Any) -> tuple[int, ...]:
        """The kernel's own choice for the phase's largest batch on the target generation."""
        backend = self.base_config().backend()
        return tuple(int(v) for v in self.declared.default(
            backend, self.plan.model, point_attention(self.plan.attention, rep), rep.batch, self.case_of(phase),
            self.generation))

    def vmem_estimate(self, phase: str, cand: Any, rep: Any) -> int | None:
        return self.declared.vmem_estimate(self.base_config(cand.options()).backend(), self.plan.model,
                                           self.case_of(phase), cand.values, page_size=rep.batch.page_size,
                                           generation=self.generation)

    def base_config(self, options: dict | None = None, label: str | None = None):

        opts = dict(self.kernel.options)
        if self.pallas:  # block-size defaults for the target generation
            opts.setdefault("generation", self.generation)
        opts.update(options or {})
        return KernelConfig(name=self.kernel.name, source=self.kernel.source, options=opts,
                            interpret=self.kernel.interpret, label=label or self.kernel.label,
                            compiler_options=dict(self.kernel.compiler_options))

    def tune_phase(self, phase: str, entry: Any, workload: Any) -> dict:
        points = self.points_of(phase, workload)
        rep = max(points, key=lambda p: (p.batch.num_tokens * p.batch.max_kv_len, p.batch.num_seqs))
        case = self.case_of(phase)
        classes = {tn.KERNEL_CASE[ph] for ph in self.units.get(phase, [phase])} if case != "all" else None
        q_of_case = [q for p in points for i, q in enumerate(p.batch.q_lens)
                     if classes is None or p.batch.seq_class(i) in classes] or [1]
        cands = tn.candidates(self.kernel.name, phase, heuristic=self.heuristic(phase, rep),
                              page_size=rep.batch.page_size, max_kv=max(p.batch.max_kv_len for p in points),
                              max_q=max(q_of_case), generation=self.generation)
        space = len(cands)
        cands = tn.subset(cands, self.tcfg.budget.compiles, seed=self.plan.seed)
        verdicts = self.prune(phase, cands, rep)
        fits = [c for c in cands if verdicts[c.label].fits]
        heur = next(c for c in cands if c.heuristic)
        if heur not in fits:  # the default must be measurable for the comparison; keep it, flagged
            fits = [heur] + fits
        measured = tn.subset(fits, self.tcfg.max_candidates, seed=self.plan.seed)
        total_w = sum(p.weight for p in points) or 1.0
        weights = {p.point_id: p.weight / total_w for p in points}
        edges = tn.kv_edges([p.batch.max_kv_len for p in points], self.tcfg.kv_quantiles or [0.5])
        buckets = {p.point_id: tn.bucket_of(p.batch.num_seqs, p.batch.max_kv_len, edges) for p in points}
        out = {"phase": phase, "kernel_case": case, "space": space, "compiled": len(cands),
               "candidates": [{"label": c.label, "values": list(c.values), "heuristic": c.heuristic,
                               **dataclasses.asdict(verdicts[c.label]), "headroom": verdicts[c.label].headroom}
                              for c in cands],
               "survivors": [c.label for c in fits], "measured": [c.label for c in measured],
               "points": [{"point_id": p.point_id, "weight": weights[p.point_id], "bucket": buckets[p.point_id],
                           "num_seqs": p.batch.num_seqs, "num_tokens": p.batch.num_tokens,
                           "max_kv_len": p.batch.max_kv_len} for p in points],
               "heuristic": heur.label, "shapes": self.shapes(rep)}
        if self.timed_here:
            out.update(self.search(phase, measured, points, weights, buckets, heur))
        else:
            out.update(self.untimed_choice(phase, fits, verdicts, heur, points, weights))
        return out

    def shapes(self, rep: Any) -> dict:
        m = self.plan.model
        return {"generation": self.target, "num_q_heads": m.num_q_heads, "num_kv_heads": m.num_kv_heads,
                "head_dim": m.head_dim, "dtype": m.dtype, "kv_dtype": m.kv_dtype, "page_size": rep.batch.page_size,
                "max_num_batched_tokens": rep.max_num_batched_tokens, "max_num_seqs": rep.max_num_seqs}

    # --- pruning -----------------------------------------------------------------------
    def prune(self, phase: str, cands: list, rep: Any) -> dict[str, tn.Verdict]:
        if not self.pallas:  # an XLA kernel (the reference): no VMEM to fit, nothing to prune
            return {c.label: tn.Verdict("ok", "none") for c in cands}

        backend = self.base_config().backend()
        sha = backend.provenance().kernel_sha256 or "unknown"
        shape = padded_shape(rep.batch, max_num_batched_tokens=rep.max_num_batched_tokens,
                             max_num_seqs=rep.max_num_seqs)
        dims = {"num_tokens": shape.max_num_batched_tokens, "num_seqs": shape.max_num_seqs,
                "num_pages": shape.num_pages, "batch": rep.batch.to_dict()}
        model = dataclasses.asdict(self.plan.model)
        keys = {c.label: tn.verdict_key(sha, self.generation, model, dims, c) for c in cands}
        limit = self.tcfg.compile_timeout_s
        verdicts = {c.label: self.cache.get(keys[c.label], timeout_s=limit) for c in cands}
        self.stats["cached_verdicts"] += sum(v is not None for v in verdicts.values())
        todo = [c for c in cands if verdicts[c.label] is None]
        ok, reason = compiling.libtpu_status()
        if todo and not ok:  # no compiler here: the kernel's own estimate decides (and says so)
            _say(f"  {phase}: libtpu unavailable ({reason}); pruning by the kernel's VMEM estimate", self.quiet)
            capacity = tpu_target.vmem_capacity_bytes(self.generation)
            for c in todo:
                verdicts[c.label] = v = tn.verdict_from_estimate(self.vmem_estimate(phase, c, rep), capacity)
                self.cache.put(keys[c.label], v)
            return verdicts
        # The kernel's own VMEM estimate is close to the compiler's use but not a lower bound:
        # measured from 0.8x to 1.096x of it (TPU7x mixed candidates, docs/tuning.md). A
        # candidate whose estimate exceeds the generation's VMEM by more than ESTIMATE_MARGIN
        # cannot fit, so it is vmem_oom without a compile (source "estimate"). Each compiled
        # verdict re-checks the ratio; past the margin the shortcut is off for the rest of the tune.
        capacity = tpu_target.vmem_capacity_bytes(self.generation)
        estimates = {c.label: self.vmem_estimate(phase, c, rep) for c in todo}
        if self.estimate_is_lower_bound and self.declared.estimate_checked:
            for c in list(todo):
                est = estimates[c.label]
                if est is not None and est > capacity * ESTIMATE_MARGIN:
                    verdicts[c.label] = v = tn.Verdict(
                        "vmem_oom", "estimate", int(est), capacity, timeout_s=limit,
                        error=f"the kernel's VMEM estimate {est} B > {ESTIMATE_MARGIN:g} x VMEM {capacity} B: not compiled")
                    self.cache.put(keys[c.label], v)
                    self.stats["pruned_by_estimate"] = self.stats.get("pruned_by_estimate", 0) + 1
                    todo.remove(c)
        # likely winners first (those the estimate says fit, by lowest modelled traffic time), so an
        # interrupted tune has answers
        order = self.modelled_times(todo, [rep], {rep.point_id: 1.0}) if todo else {}
        if order:
            todo.sort(key=lambda c: (not c.heuristic, (estimates[c.label] or 0) > capacity, order[c.label]))
        attn = self.plan.attention
        jobs = [compiling.CompileJob(self.base_config(c.options(), c.label).to_dict(), c.label, self.plan.model,
                                     attn, rep.batch, self.generation, phase, self.tcfg.schedule,
                                     {"max_num_batched_tokens": rep.max_num_batched_tokens,
                                      "max_num_seqs": rep.max_num_seqs})
                for c in todo]
        pruned = sum(1 for c in cands if verdicts[c.label] is not None and verdicts[c.label].source == "estimate"
                     and c.label in estimates)
        if jobs:
            _say(f"  {phase}: compiling {len(jobs)} candidates for {self.generation}, likely winners first "
                 f"({len(cands) - len(jobs) - pruned} verdicts cached, {pruned} over VMEM by the kernel's own "
                 "estimate, not compiled)", self.quiet)

        eta = compiling.Eta(len(jobs))

        def progress(r) -> None:  # each verdict is cached as it comes: a killed tune keeps them
            v = dataclasses.replace(tn.verdict_from_compile(r, self.generation, phase, self.kernel.name),
                                    timeout_s=limit)
            est = estimates.get(r.kernel)
            if est is not None and v.vmem_used_bytes and est > v.vmem_used_bytes * ESTIMATE_MARGIN:
                self.estimate_is_lower_bound = False
                _say(f"    note: {r.kernel}'s VMEM estimate {est} B exceeds the compiler's {v.vmem_used_bytes} B by "
                     f"more than {ESTIMATE_MARGIN:g}x: from here every candidate is compiled", self.quiet)
            line = eta.done()
            verdicts[r.kernel] = v
            self.stats["compiles"] += 1
            if r.status != "skipped":
                self.cache.put(keys[r.kernel], v)
            _say(f"    {r.kernel:<28} {r.status:<9} {r.compile_s:6.1f} s   {line}", self.quiet)

        compiling.compile_many(jobs, timeout_s=limit, progress=progress, timeout_field="tune.compile_timeout_s",
                               workers=self.tcfg.compile_workers, engine=self.engine)
        return verdicts

    # --- measuring ------------------------------------------------------------------------
    def spread_to(self) -> str | None:
        """The accelerator resource a rung's candidates are spread over (one Ray task each), or
        None: only on a Ray cluster with two or more accelerators of the kind timed on."""
        if not self.engine.is_ray or not self.timed_here:
            return None
        resource = eng.accelerator_resource(self.engine, jax.devices()[0].platform)
        if resource is None:
            return None
        have = eng.connect(self.engine).get(resource, 0)
        return resource if have >= 2 else None

    def search(self, phase: str, cands: list, points: list, weights: dict, buckets: dict, heur: Any) -> dict:
        ids = {p.point_id for p in points}
        frames: dict[int, Any] = {}
        spread = self.spread_to()
        if spread:
            _say(f"  {phase}: each rung's candidates spread over the cluster's {spread} accelerators (one Ray "
                 "task each, timed interleaved with the heuristic on the same accelerator)", self.quiet)

        def evaluate(alive, rung: int, samples: int):
            started = time.perf_counter()
            if spread:
                lat, pair_frames = self.spread_rung(phase, alive, heur, rung, samples, ids, spread)
                df = pair_frames  # per contender: its own frame (paired with the heuristic)
            else:
                df = self.measure_rung(phase, alive, rung, samples, ids)
                lat = latencies(df)
            took = time.perf_counter() - started
            frames[rung] = (lat, df)
            scores = {}
            for c in alive:
                per = lat.get(c.label, {})
                scores[c.label] = (sum(weights[p] * per[p] for p in ids) * 1e-6
                                   if all(p in per for p in ids) else math.inf)
            spent = sum(float((f["latency_us"].fillna(0) * f["samples_us"].map(
                lambda s: len(s) if s is not None else 0)).sum() * 1e-6)
                for f in (df.values() if isinstance(df, dict) else [df]) if f is not None)
            finite = {k: v for k, v in scores.items() if math.isfinite(v)}
            lead = min(finite, key=finite.get) if finite else "none (no candidate measured on every point)"
            contenders = sum(1 for c in alive if not c.heuristic)
            eta = 1 if self.tcfg.strategy == "grid" else self.tcfg.eta
            left = 0 if eta == 1 or contenders <= 1 else math.ceil(math.log(contenders, eta))
            # each rung keeps 1/eta of the contenders with eta x the samples: about as long as this one
            eta_note = (f"; about {left} more rung(s) of ~{took:.0f} s each (until tune.budget.device_s="
                        f"{self.tcfg.budget.device_s:g} of timed samples)" if left else "")
            _say(f"  {phase} rung {rung}: {len(alive)} candidates x {len(ids)} points, {samples} samples in "
                 f"{took:.0f} s; leading {lead}{eta_note}", self.quiet)
            return scores, spent

        eta = 1 if self.tcfg.strategy == "grid" else self.tcfg.eta
        rungs = tn.successive_halving(cands, evaluate, eta=eta, min_samples=self.tcfg.min_samples,
                                      budget_s=self.tcfg.budget.device_s)
        final_lat, final = frames[rungs[-1].index]
        answer = tn.analyze(final_lat, weights, buckets, phase, heur.label)
        if isinstance(final, dict):  # spread: the best's own task timed it with the heuristic, paired
            pair = final.get(answer.best)
            vs = vs_heuristic(pair, heur.label, answer.best) if pair is not None else {"same": True}
        else:
            vs = vs_heuristic(final, heur.label, answer.best)
        cut = (eta > 1 and len(rungs[-1].kept) > 2
               and sum(r.spent_s for r in rungs) >= self.tcfg.budget.device_s)
        chosen, why = recommend(answer.best, heur.label, vs)
        if cut:
            why += (f"; the search was cut short by tune.budget.device_s={self.tcfg.budget.device_s:g} after "
                    f"{len(rungs)} rung(s) with {len(rungs[-1].kept) - 1} contenders left")
        out = {"rungs": [dataclasses.asdict(r) for r in rungs], "answer": dataclasses.asdict(answer),
               "fastest_measured": answer.best, "best": chosen, "recommendation": why, "cut_short": cut,
               "best_values": next(list(c.values) for c in cands if c.label == chosen),
               "timed": True, "vs_heuristic": vs, "spread_over": spread}
        return out

    def spread_rung(self, phase: str, alive: list, heur: Any, rung: int, samples: int, ids: set,
                    resource: str) -> tuple[dict, dict]:
        """One Ray task per contender, each declaring one ``resource``: the contender timed
        interleaved with the heuristic on that accelerator, in its own run folder. Accelerators
        differ, so a contender is scored by its paired ratio to the heuristic on its own device,
        times the heuristic's median latency over every task. Returns (label -> point ->
        latency us, label -> its task's frame); a failed task leaves its contender unscored."""
        contenders = [c for c in alive if not c.heuristic]
        items = [(self, phase, [heur, c], rung, samples, ids, f"rung{rung}/{c.label}") for c in contenders]
        pair_frames: dict[str, Any] = {}
        for i, res in eng.map_as_completed(_measure_remote, items, self.engine, resources={resource: 1.0},
                                           memory_gib=None):
            c = contenders[i]
            if isinstance(res, eng.TaskFailure):
                _say(f"    {c.label}: its Ray task failed ({res.error}); not scored", self.quiet)
                continue
            pair_frames[c.label] = res
            self.stats["rows_measured"] += len(res)
        per_task = {label: latencies(df) for label, df in pair_frames.items()}
        heur_lat = {}
        for p in ids:
            seen = sorted(t[heur.label][p] for t in per_task.values() if p in t.get(heur.label, {}))
            if seen:
                heur_lat[p] = seen[len(seen) // 2]
        lat = {heur.label: heur_lat}
        for label, t in per_task.items():
            mine, base = t.get(label, {}), t.get(heur.label, {})
            lat[label] = {p: mine[p] / base[p] * heur_lat[p] for p in mine if p in base and base[p] > 0
                          and p in heur_lat}
        return lat, pair_frames

    def measure_rung(self, phase: str, alive: list, rung: int, samples: int, ids: set,
                     folder_name: str | None = None) -> Any:

        timing = dataclasses.replace(self.plan.timing, num_samples=samples,
                                     min_samples=min(self.plan.timing.min_samples, samples))
        kernels = tuple(self.base_config(c.options(), c.label) for c in alive)
        folder = self.out / phase
        plan = dataclasses.replace(self.plan, kernels=kernels, timing=timing, results_dir=folder,
                                   run_name=f"rung{rung}", experiment=f"tune-{phase}")
        # the workload built once (a trace simulated once), each rung on the phase's points only
        prep = prepare.prepare_run(plan, [(self.entry, dataclasses.replace(
            self.workload, points=[p for p in self.workload.points if p.point_id in ids]))])
        store = RunStore(folder / (folder_name or f"rung{rung}"))
        store.acquire_lock()
        try:
            # output-only settings do not make a rung a different run (a resume may change them)
            tune_cfg = {k: v for k, v in dict(self.config.get("tune") or {}).items() if k not in OUTPUT_ONLY}
            config = {**self.config, "tune": tune_cfg, "tune_rung": {"phase": phase, "rung": rung, "samples": samples,
                                                   "candidates": [c.label for c in alive]}}
            run_folder.open_store(store, config, prep, f"tune-{phase}-rung{rung}",
                             command=["rpa-bench", "tune", *sys.argv[1:]])
            counts = execute.execute(prep, store, run_id=f"tune-{phase}-rung{rung}",
                                   progress=not self.quiet and self.progress,
                                   done=set(store.done_keys()))
            self.stats["rows_measured"] += sum(counts.values())
            store.consolidate()
            store.update_manifest(status="complete")
            return store.read()
        finally:
            store.release_lock()

    def modelled_times(self, fits: list, points: list, weights: dict) -> dict[str, float]:
        """Off TPU: each candidate's modelled time over the phase's points (weighted mean, us):
        max(the bytes its schedule moves / HBM bandwidth, FLOPs / peak) + tune.step_cost_us per
        (query block, KV block) step, on the target generation's datasheet. Empty when the
        kernel declares no traffic model."""
        spec = listed_device_spec(BY_KIND[self.generation].spec_name)
        out: dict[str, float] = {}
        for c in fits:
            backend = self.base_config(c.options()).backend()
            if not hasattr(backend, "traffic"):
                return {}
            if hasattr(backend, "check_vmem_estimate"):
                backend.check_vmem_estimate = False  # the compiler, not the estimate, decides fit
            total = 0.0
            for p in points:
                attn = point_attention(self.plan.attention, p)
                try:
                    traffic = backend.traffic(self.plan.model, attn, p.batch, generation=self.generation)
                except ValueError:  # a tuple the kernel refuses for this batch: ranked last
                    total = math.inf
                    break
                cost = cost_of(p.batch, self.plan.model, attn, causal=p.causal)
                seconds = modelled_time_s(traffic.hbm_bytes, cost.flops, spec, steps=traffic.iterations,
                                          step_s=self.tcfg.step_cost_us * 1e-6, dtype=self.plan.model.dtype)
                total += weights[p.point_id] * seconds * 1e6
            out[c.label] = total
        return out

    def untimed_choice(self, phase: str, fits: list, verdicts: dict, heur: Any, points: list | None = None,
                       weights: dict | None = None) -> dict:
        """Off TPU: no timing. The survivor with the lowest modelled time (its traffic and
        FLOPs on the target's datasheet, plus a cost per block step; a TPU-free ranking, not a
        speed claim), else the shortest static schedule, checked in interpret mode."""
        modelled = self.modelled_times(fits, points or [], weights or {}) if points else {}
        if modelled:
            chosen = min(fits, key=lambda c: (modelled[c.label], not c.heuristic))
            why = (f"lowest modelled time (moved bytes / HBM bandwidth vs FLOPs / peak on {self.generation}'s "
                   f"datasheet, + {self.tcfg.step_cost_us:g} us per block step), not timed")
            if chosen.label == heur.label:
                why += " (the heuristic's own tuple)"
        else:
            ranked = sorted(fits, key=lambda c: (verdicts[c.label].bundles is None, verdicts[c.label].bundles or 0,
                                                 not c.heuristic))
            ranked_by_schedule = bool(ranked) and verdicts[ranked[0].label].bundles is not None
            chosen = ranked[0] if ranked_by_schedule else heur
            if ranked_by_schedule:
                why = "shortest static schedule (bundles), not timed" + (
                    " (the heuristic's own tuple)" if chosen.label == heur.label else "")
            else:
                why = "the kernel's heuristic: no candidate has a traffic model or schedule figures to rank by, " \
                      "not timed"
        check = self.interpret_check(phase, chosen) if self.tcfg.check_interpret else None
        return {"timed": False, "best": chosen.label, "best_values": list(chosen.values), "chosen_by": why,
                "ranking": "modelled time" if modelled else "static schedule" if "schedule" in why else "heuristic",
                "modelled_us": {k: round(v, 3) for k, v in modelled.items()}, "interpret_check": check}

    def interpret_check(self, phase: str, cand: Any) -> dict:

        page = self.plan.workloads[0].config.get("page_size") or 256
        backend = self.base_config(cand.options()).backend()
        multiple = getattr(backend.capabilities, "page_size_multiple", None) or 1
        page = -(-page // multiple) * multiple  # a page the kernel's layout takes
        given = dict(zip(cand.knob.fields, cand.values))
        bq = given.get("bq_sz") or given.get("num_queries_per_block") or 8
        bkv = given.get("bkv_sz") or given.get("num_kv_pages_per_block", 1) * page
        kv_long = bkv + page // 2 + 3  # more than one fetch block
        q = {"decode": (1, 1), "prefill": (min(bq + 5, 64), 9), "verify": (4, 4)}.get(phase, (1, min(bq + 5, 64)))
        kv = (kv_long, max(q[1], page + 7))
        chunk = q[0] if phase == "prefill" else None
        batch = RaggedBatch(q_lens=q, kv_lens=(max(kv[0], q[0]), kv[1]), page_size=page, chunk_prefill_size=chunk)
        model = check_model(self.plan.model)
        record = check_on_inputs(backend, materialize(batch, model), self.plan.attention, interpret=True,
                                 case=f"tune-{phase}")
        _say(f"  {phase}: interpret-mode check of {cand.label}: {record.status} "
             f"(max abs err {record.max_abs_err})", self.quiet)
        return {"status": record.status, "max_abs_err": record.max_abs_err, "tolerance": record.tolerance,
                "batch": batch.to_dict(), "message": record.message}

    # --- the answer ------------------------------------------------------------------------
    def summary(self, entry: Any, workload: Any, results: dict, seconds: float) -> dict:
        best = {}
        for ph, r in results.items():
            best[ph] = tn.Candidate(self.kernel.name, ph, tuple(r["best_values"]))
        env = tn.env_lines(best)
        exports = tn.exports(best)
        table = {}
        for ph, r in results.items():
            shapes = r["shapes"]
            key = (f"{shapes['generation']}|h{shapes['num_q_heads']}/{shapes['num_kv_heads']}-d{shapes['head_dim']}-"
                   f"{shapes['dtype']}/{shapes['kv_dtype']}-p{shapes['page_size']}")
            for bucket, v in ((r.get("answer") or {}).get("per_bucket") or {"all": {"best": r["best"]}}).items():
                table.setdefault(key, {}).setdefault(ph, {})[bucket] = v["best"]
        return {"kernel": self.kernel.name, "kernel_source": self.kernel.source, "workload": entry.name,
                "workload_kind": workload.kind, "generation": self.target, "timed_here": self.timed_here,
                "on_tpu": self.on_tpu, "strategy": self.tcfg.strategy, "eta": self.tcfg.eta,
                "scale": self.plan.scale.name, "phases": results, "env": env, "exports": exports,
                "export_lines": tn.export_lines(exports), "table": table,
                "stats": {**self.stats, "wall_s": round(seconds, 1)}, "folder": str(self.out)}


def _measure_remote(item: tuple) -> Any:
    """A spread rung's task (in a Ray worker, on the accelerator it declared): the contender and
    the heuristic timed interleaved in their own run folder; the frame goes back to the driver."""
    tuner, phase, pair, rung, samples, ids, folder_name = item
    tuner.quiet = True
    return tuner.measure_rung(phase, pair, rung, samples, ids, folder_name=folder_name)


def latencies(df: Any) -> dict[str, dict[str, float]]:
    """label -> point -> median latency (us) of ok rows (the kernel-only variant when present)."""
    ok = df[(df["status"] == Status.OK) & df["latency_us"].notna()]
    if ok.empty:
        return {}
    variant = "excl_prep" if (ok["variant"] == "excl_prep").any() else ok["variant"].iloc[0]
    ok = ok[ok["variant"] == variant]
    out: dict[str, dict[str, float]] = {}
    for (kernel, point), lat in ok.groupby(["kernel", "point_id"])["latency_us"]:
        out.setdefault(str(kernel), {})[str(point)] = float(lat.iloc[0])
    return out


def vs_heuristic(df: Any, heuristic: str, best: str) -> dict:
    """The heuristic (A) vs the tuned tuple (B) on the same points: paired ratios with CIs."""

    if heuristic == best:
        return {"same": True}
    result = compare_kernels(df, heuristic, best)
    s = summarize(result)
    rows = result[["point_id", "variant", "latency_a_us", "latency_b_us", "ratio", "ci_low", "ci_high", "mark"]]
    return {"same": False, "geomean_ratio": s.geomean_ratio, "points": json.loads(rows.to_json(orient="records"))}



def recommend(fastest: str, heuristic: str, vs: dict) -> tuple[str, str]:
    """The tuple to recommend and why: the fastest measured one only when the paired
    comparison with the heuristic finds it significantly faster somewhere and significantly
    slower nowhere; else keep the heuristic."""
    if vs.get("same") or fastest == heuristic:
        return heuristic, "keep the heuristic: it was the fastest measured"
    marks = [p.get("mark") for p in vs.get("points") or []]
    if WORSE in marks:
        return heuristic, f"keep the heuristic: {fastest} is significantly slower on {marks.count(WORSE)} point(s)"
    if IMPROVED not in marks:
        return heuristic, (f"keep the heuristic: {fastest} measured faster (geomean ratio "
                           f"{vs.get('geomean_ratio', float('nan')):.3f}) but on no point significantly "
                           "(raise tune.min_samples or tune.budget.device_s to decide)")
    return fastest, (f"{fastest}: significantly faster on {marks.count(IMPROVED)} of {len(marks)} (point, variant) "
                     "pairs, slower on none")


def format_summary(summary: dict) -> str:
    lines = [f"{summary['kernel']} on {summary['workload']} ({'timed' if summary['timed_here'] else 'not timed: '}"
             f"{'' if summary['timed_here'] else 'compile-only pruning for ' + summary['generation']})"]
    for ph, r in summary["phases"].items():
        n_fit = len(r["survivors"])
        lines.append(f"\n[{ph}] space {r['space']}, compiled/checked {r['compiled']}, fit {n_fit}, "
                     + (f"measured {len(r['measured'])}" if r["timed"] else "none timed here")
                     + f"; heuristic {r['heuristic']}; {'recommended' if r['timed'] else 'chosen'} {r['best']}")
        if not r["timed"]:
            lines.append(f"  chosen by {r['chosen_by']}")
            chk = r.get("interpret_check")
            if chk:
                lines.append(f"  interpret-mode correctness: {chk['status']} (max abs err {chk['max_abs_err']})")
            modelled = r.get("modelled_us") or {}
            lines.append(f"  {'candidate':<28} {'status':<9} {'VMEM used MiB':>13} {'headroom':>8} {'bundles':>8}"
                         f" {'modelled us':>12}")
            for c in r["candidates"]:
                used = c["vmem_used_bytes"]
                m = modelled.get(c["label"])
                lines.append(f"  {c['label'] + (' *' if c['heuristic'] else ''):<28} {c['status']:<9} "
                             f"{'' if used is None else f'{used / 2**20:.2f}':>13} "
                             f"{'' if c['headroom'] is None else f'{c['headroom']:.0%}':>8} "
                             f"{'' if c['bundles'] is None else c['bundles']:>8} "
                             f"{'' if m is None else f'{m:.1f}':>12}")
            continue
        a = r["answer"]
        lines.append(f"  weighted mean latency per call: heuristic {a['totals'][a['heuristic']]:.1f} us, fastest measured "
                     f"{a['totals'][a['best']]:.1f} us ({a['speedup_vs_heuristic']:.3f}x); "
                     f"regret of one tuple for all buckets: {a['regret_pct']:.2f}%")
        if r.get("recommendation"):
            lines.append(f"  recommendation: {r['recommendation']}")
        vs = r["vs_heuristic"]
        if not vs.get("same"):
            for p in vs["points"]:
                lines.append(f"    {p['point_id']:<12} {p['variant']:<9} tuned/heuristic {p['ratio']:.3f} "
                             f"[{p['ci_low']:.3f}, {p['ci_high']:.3f}] {p['mark']}")
        lines.append(f"  {'bucket':<26} {'best':<28} {'best us':>10} {'heuristic us':>12} {'one-tuple us':>12}  (weighted mean per call)")
        for b, v in a["per_bucket"].items():
            lines.append(f"  {b:<26} {v['best']:<28} {v['best_us']:>10.1f} {v['heuristic_us']:>12.1f} "
                         f"{v['global_us']:>12.1f}")
    if summary.get("export_lines"):
        ways = sorted({r.get("chosen_by", "").split(", not timed")[0] for r in summary["phases"].values()
                       if not r["timed"]})
        lines.append("\nserving (paste):" if summary["timed_here"] else
                     f"\nto time on a TPU first (NOT timed here; chosen by {'; '.join(ways)}):")
        lines += [f"  {line}" for line in summary["export_lines"]]
    st = summary["stats"]
    lines.append(f"\n{st['compiles']} compiles, {st['cached_verdicts']} cached verdicts, "
                 f"{st.get('pruned_by_estimate', 0)} over VMEM by the kernel's estimate (not compiled), "
                 f"{st['rows_measured']} rows "
                 f"measured, {st['wall_s']} s")
    return "\n".join(lines)


