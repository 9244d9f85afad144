"""Block sizes tuned for a workload's batches: search space, pruning, successive halving.

The knobs are what each kernel declares (:mod:`rpa_bench.kernels.tuning`): RPA v3 takes
per kernel case a tuple ``(bq_sz, bkv_sz, bq_csz, bkv_csz)`` in tokens, batched and stacked
RPA a ``BlockSizes`` per call, RPA v2 / JAX's / the head_dim-64 kernel one
``(num_kv_pages_per_block, num_queries_per_block)`` pair; each a static argument (one compile
each). The reference has one knob of its own, ``block_bytes`` (the working set of one step),
so the whole machinery runs for real on a CPU or GPU.

- **Space** (:func:`candidates`): from the kernel's rules (its declared grid), not guesses.
  The kernel's own default for the phase's largest batch is always a candidate, so the
  result is never worse than the default on the measured points.
- **Pruning** (:func:`compile_verdicts`): each candidate compiled for the target TPU
  generation by the real compiler (offline, libtpu) on the phase's largest batch, dropped
  with its reason when it does not fit VMEM or does not compile; without libtpu the
  kernel's own VMEM estimate decides, and the verdict says so. Verdicts are cached by
  (kernel file sha256, generation, model, padded batch, tuple): reruns are instant.
- **Search** (:func:`successive_halving`): rungs of the suite's own measurement
  (interleaved, correctness-gated) on fewer candidates with more samples each: keep the
  best 1/eta by the phase's time-weighted latency. Chosen over a Bayesian search
  (Optuna's TPE) because the space is small and discrete after pruning and every
  candidate's compile is paid anyway; halving spends the device seconds on the
  contenders and its result does not depend on a sampler's seed.
- **Distribution-aware answer** (:func:`analyze`): the best tuple for the whole phase
  (time-weighted over the points: a trace's sampled steps carry their share of the
  simulated time), the best per bucket (buckets: sequences in the batch by power of two,
  and the longest kv above or below the phase's kv-length quantiles), and the regret of
  one tuple for all buckets against the per-bucket best.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rpa_bench.kernels.registry import TUNABLE_BACKENDS, tuning
from rpa_bench.kernels.tuning import PHASES, Knob
from rpa_bench.workloads.batch import RaggedBatch

TUNABLE = TUNABLE_BACKENDS

# the kernel case a phase tunes for RPA v3 (verify: the speculative-decoding verify step runs
# the mixed kernel); other kernels declare their own mapping (Tuning.phase_case)
KERNEL_CASE = {"decode": "decode", "prefill": "prefill", "mixed": "mixed", "verify": "mixed"}


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One value of one kernel's knob for one phase. ``heuristic``: the kernel's own default."""

    kernel: str
    phase: str
    values: tuple[int, ...]
    heuristic: bool = False

    @property
    def label(self) -> str:
        body = ".".join(str(v) for v in self.values)
        return f"{self.phase}-{body}"

    @property
    def knob(self) -> Knob:
        return tuning(self.kernel).knob(self.phase)

    def options(self) -> dict:
        """The kernel options that select these values."""
        return self.knob.options(self.values)

    def env_value(self) -> str:
        return ",".join(str(v) for v in self.values)


# --- which batches a phase covers ----------------------------------------------------------
def exercises(batch: RaggedBatch, phase: str) -> bool:
    """Whether ``batch`` runs the kernel case ``phase`` tunes (a mixed batch runs several)."""
    d, p_end, n = batch.distribution
    if phase == "decode":
        return d > 0
    if phase == "prefill":
        return p_end > d
    return n > p_end  # mixed and verify: the mixed kernel


def phase_of_point(batch: RaggedBatch, workload_kind: str, phase: str) -> bool:
    """A point belongs to ``phase``: verify is the spec_verify workloads' own phase."""
    if (workload_kind == "spec_verify") != (phase == "verify"):
        return False
    return exercises(batch, phase)


def phases_in(batches: Iterable[tuple[RaggedBatch, str]]) -> list[str]:
    """The phases a workload's (batch, workload kind) pairs exercise, in PHASES order."""
    pairs = list(batches)
    return [ph for ph in PHASES if any(phase_of_point(b, kind, ph) for b, kind in pairs)]


# --- the search space --------------------------------------------------------------------
def candidates(kernel: str, phase: str, *, heuristic: Sequence[int], page_size: int = 1, max_kv: int = 1,
               max_q: int = 1, generation: str | None = None) -> list[Candidate]:
    """The phase's candidates from the kernel's declared grid, the heuristic first (always present, marked)."""
    declared = tuning(kernel)
    if phase not in PHASES:
        raise ValueError(f"tune.phases: {phase!r} unknown; allowed: {', '.join(PHASES)}")
    default = Candidate(kernel, phase, tuple(int(v) for v in heuristic), heuristic=True)
    grid = declared.grid(declared.phase_case[phase], page_size=page_size, max_kv=max_kv, max_q=max_q,
                         generation=generation)
    return [default] + [Candidate(kernel, phase, tuple(t)) for t in grid if tuple(t) != default.values]


def subset(cands: Sequence[Candidate], limit: int, *, seed: int = 0) -> list[Candidate]:
    """At most ``limit`` candidates: the heuristic and an even spread of the rest (seeded)."""
    if len(cands) <= limit:
        return list(cands)
    rest = [c for c in cands if not c.heuristic]
    keep = np.sort(np.random.default_rng(seed).choice(len(rest), size=max(0, limit - 1), replace=False))
    return [c for c in cands if c.heuristic] + [rest[i] for i in keep]


# --- pruning -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether a candidate compiles and fits, and how we know (``source``)."""

    status: str  # ok | vmem_oom | hbm_oom | failed | timeout
    source: str  # compile:<generation> | estimate (the kernel's own VMEM estimate) | none
    vmem_used_bytes: int | None = None
    vmem_capacity_bytes: int | None = None
    bundles: int | None = None  # static schedule length of the largest Mosaic kernel
    compile_s: float | None = None
    error: str | None = None
    timeout_s: float | None = None  # the compile limit the verdict was reached under

    @property
    def fits(self) -> bool:
        return self.status == "ok"

    @property
    def headroom(self) -> float | None:
        if self.vmem_used_bytes is None or not self.vmem_capacity_bytes:
            return None
        return 1.0 - self.vmem_used_bytes / self.vmem_capacity_bytes


def verdict_key(kernel_sha256: str, generation: str, model: Mapping, batch_dims: Mapping, cand: Candidate) -> str:
    blob = json.dumps([kernel_sha256, generation, dict(model), dict(batch_dims), cand.phase, list(cand.values)],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class VerdictCache:
    """Compile verdicts on disk (one JSON file), keyed by :func:`verdict_key`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.data: dict[str, dict] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def get(self, key: str, *, timeout_s: float | None = None) -> Verdict | None:
        """The cached verdict, or None. A ``timeout`` holds only for the limit it was reached
        under: with a larger ``timeout_s`` the candidate is compiled again."""
        d = self.data.get(key)
        if d is None:
            return None
        v = Verdict(**d)
        if v.status == "timeout" and timeout_s is not None and (v.timeout_s is None or timeout_s > v.timeout_s):
            return None
        return v

    def put(self, key: str, verdict: Verdict) -> None:
        self.data[key] = dataclasses.asdict(verdict)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        tmp.replace(self.path)


def verdict_from_compile(result: Any, generation: str, phase: str, kernel: str = "rpa_v3") -> Verdict:
    """A :class:`rpa_bench.kernels.compiling.CompileResult` as a verdict: VMEM and schedule of
    the phase's own Mosaic kernel (RPA v3: ``RPA<d|p|m>-...``) when the batch ran several."""
    declared = tuning(kernel)
    prefix = declared.kernel_prefix(declared.phase_case[phase])

    def own(figures: Mapping[str, int]) -> list[int]:
        mine = [v for k, v in figures.items() if prefix is not None and k.startswith(prefix)]
        return mine or list(figures.values())

    used, bundles = own(result.vmem_used_bytes or {}), own(result.bundles or {})
    return Verdict(status=result.status, source=f"compile:{generation}", vmem_used_bytes=max(used) if used else None,
                   vmem_capacity_bytes=result.vmem_capacity_bytes, bundles=max(bundles) if bundles else None,
                   compile_s=round(float(result.compile_s), 2), error=result.error)


def verdict_from_estimate(estimate: int | None, capacity: int) -> Verdict:
    """The kernel's own VMEM estimate against the generation's VMEM (no compiler here)."""
    if estimate is None:
        return Verdict("ok", "none", None, capacity, error="no compiler and no kernel estimate: not pruned")
    return Verdict("ok" if estimate <= capacity else "vmem_oom", "estimate", int(estimate), capacity,
                   error=None if estimate <= capacity else f"kernel estimate {estimate} B > VMEM {capacity} B")


# --- the search ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Rung:
    index: int
    samples: int
    scores: dict[str, float]  # label -> time-weighted seconds over the phase's points (inf: failed/incorrect)
    spent_s: float  # measured seconds this rung (samples x latency over candidates and points)
    kept: tuple[str, ...]


Evaluate = Callable[[Sequence[Candidate], int, int], tuple[dict[str, float], float]]


def successive_halving(cands: Sequence[Candidate], evaluate: Evaluate, *, eta: int = 3, min_samples: int = 5,
                       budget_s: float = math.inf, max_rungs: int = 8) -> list[Rung]:
    """Rungs until one contender (beside the heuristic) is left or the budget is spent.

    ``evaluate(candidates, rung, samples) -> ({label: score}, seconds spent)``; lower is
    better. The heuristic stays in every rung: the final rung compares it head to head with
    the winner. ``eta=1`` or a single rung is a grid search.
    """
    if eta < 1:
        raise ValueError(f"tune.eta={eta} must be >= 1")
    alive = list(cands)
    rungs: list[Rung] = []
    spent = 0.0
    for r in range(max_rungs):
        samples = min_samples * eta**r
        scores, cost = evaluate(alive, r, samples)
        spent += cost
        ranked = sorted((c for c in alive if not c.heuristic), key=lambda c: scores.get(c.label, math.inf))
        n_keep = max(1, math.ceil(len(ranked) / eta)) if eta > 1 else len(ranked)
        kept = [c for c in alive if c.heuristic] + ranked[:n_keep]
        rungs.append(Rung(r, samples, dict(scores), cost, tuple(c.label for c in kept)))
        if eta == 1 or len(ranked) <= 1 or spent >= budget_s:
            break
        alive = kept
    return rungs


# --- the answer --------------------------------------------------------------------------
def kv_edges(max_kvs: Sequence[int], quantiles: Sequence[float]) -> list[float]:
    return sorted({float(np.quantile(np.asarray(max_kvs, float), q)) for q in quantiles}) if len(max_kvs) else []


def bucket_of(num_seqs: int, max_kv: int, edges: Sequence[float]) -> str:
    """``seqs<=N`` (N: the power of two at or above) and the kv-length band of the edges."""
    seqs = 1 << max(0, int(num_seqs) - 1).bit_length()
    band = sum(max_kv > e for e in edges)
    if not edges:
        kv = "all kv"
    elif band == 0:
        kv = f"kv<={edges[0]:.0f}"
    elif band == len(edges):
        kv = f"kv>{edges[-1]:.0f}"
    else:
        kv = f"kv {edges[band - 1]:.0f}-{edges[band]:.0f}"
    return f"seqs<={seqs} {kv}"


@dataclasses.dataclass(frozen=True)
class PhaseAnswer:
    phase: str
    best: str  # label of the best tuple for the whole phase
    heuristic: str
    totals: dict[str, float]  # label -> weighted mean latency per call (us) over the phase's points
    per_bucket: dict[str, dict]  # bucket -> {best, best_us, heuristic_us, global_us (weighted mean us), points}
    regret_pct: float  # one tuple for all buckets vs each bucket's best
    speedup_vs_heuristic: float  # heuristic total / best total


def analyze(latency_us: Mapping[str, Mapping[str, float]], weights: Mapping[str, float], buckets: Mapping[str, str],
            phase: str, heuristic: str) -> PhaseAnswer:
    """``latency_us[label][point]``: a candidate's median latency per point (a missing point:
    the candidate failed or was incorrect there, so it cannot be chosen)."""
    points = sorted(weights)
    full = {lab: lat for lab, lat in latency_us.items() if all(p in lat and np.isfinite(lat[p]) for p in points)}
    if heuristic not in full:
        raise ValueError(f"phase {phase}: the heuristic tuple {heuristic} was not measured on every point")
    # weight x latency sums rank the tuples; what is shown is their weighted mean per call
    # (sum / weight: microseconds), so every "us" figure is a latency
    total_w = float(sum(weights[p] for p in points)) or 1.0
    sums_all = {lab: float(sum(weights[p] * lat[p] for p in points)) for lab, lat in full.items()}
    totals = {lab: s / total_w for lab, s in sums_all.items()}
    best = min(totals, key=lambda lab: (totals[lab], lab != heuristic))
    per_bucket: dict[str, dict] = {}
    bucket_best_sum = 0.0
    for b in sorted(set(buckets[p] for p in points)):
        pts = [p for p in points if buckets[p] == b]
        w = float(sum(weights[p] for p in pts))
        sums = {lab: sum(weights[p] * lat[p] for p in pts) for lab, lat in full.items()}
        b_best = min(sums, key=lambda lab: (sums[lab], lab != heuristic))
        bucket_best_sum += sums[b_best]
        per_bucket[b] = {"best": b_best, "best_us": sums[b_best] / (w or 1.0),
                         "heuristic_us": sums[heuristic] / (w or 1.0), "global_us": sums[best] / (w or 1.0),
                         "points": len(pts), "weight": w}
    regret = (sums_all[best] / bucket_best_sum - 1.0) * 100 if bucket_best_sum > 0 else 0.0
    return PhaseAnswer(phase, best, heuristic, totals, per_bucket, regret, totals[heuristic] / totals[best])


def env_lines(answers: Mapping[str, Candidate]) -> list[str]:
    """The environment lines production reads (RPA v3: ``RPA_V3_*_BLOCK_SIZES=bq,bkv,bq_c,bkv_c``),
    one per kernel case, from the phases that tune that case themselves."""
    out = []
    for phase, cand in answers.items():
        knob = cand.knob
        if knob.env is not None and knob.case == phase and knob.env_line(cand.values) not in out:
            out.append(knob.env_line(cand.values))
    return out


def exports(answers: Mapping[str, Candidate]) -> dict[str, dict]:
    """Per kernel case: the tuned values in every form they are set in (production's environment
    variable where it reads one, production's call arguments, this suite's overrides)."""
    out: dict[str, dict] = {}
    for phase, cand in answers.items():
        knob = cand.knob
        if knob.case in out and out[knob.case]["phase"] == knob.case:
            continue  # the phase named as the case tunes it; others only where it was not tuned itself
        out[knob.case] = {"phase": phase, "values": list(cand.values), "fields": list(knob.fields),
                          "env": knob.env_line(cand.values), "call": knob.call_kwargs(cand.values),
                          "overrides": knob.overrides(cand.values)}
    return out


def export_lines(exports: Mapping[str, dict]) -> list[str]:
    """What to paste, per kernel case: ``export NAME=...`` where production reads an environment
    variable, else production's call arguments; and this suite's overrides for the same values."""
    lines = []
    for case, e in exports.items():
        lines.append(f"export {e['env']}" if e["env"] else f"{case}: call with {e['call']}")
    for e in exports.values():
        lines.append(f"rpa-bench: {' '.join(e['overrides'])}")
    return lines


def parse_env_line(line: str) -> tuple[str, tuple[int, ...]]:
    """The inverse of :func:`env_lines` for one line: (kernel option name, tuple)."""
    name, _, value = line.partition("=")
    knobs = {k.env: k for kernel in TUNABLE for k in tuning(kernel).knobs.values() if k.env}
    if name not in knobs:
        raise ValueError(f"{name!r}: allowed: {', '.join(knobs)}")
    knob = knobs[name]
    parts = tuple(int(x) for x in value.split(","))
    if len(parts) != len(knob.fields):
        raise ValueError(f"{name}={value!r}: expected {','.join(knob.fields)}")
    return knob.option, parts
