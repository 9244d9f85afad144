"""``rpa-bench history``: a kernel across tpu-inference commits, one stored result per revision.

    rpa-bench history --repo ~/tpu-inference --revisions v0.31.0..main --every 5 \\
        -- experiment=paper_decode scale=cpu_smoke
    rpa-bench history --repo ~/tpu-inference --revisions GOOD..BAD --steps -- experiment=paper_decode

For each revision: the run plan of ``rpa-bench run`` with the overrides after ``--`` and
``kernel=<--kernel> kernel.source=<repo>@<sha>``, run through the pipeline (every point checked against the reference;
timed where the device allows: on CPU the RPA kernels are checked in interpret mode only),
then the kernel compiled for ``--generations`` (libtpu compile-only: does it still compile
and fit VMEM?). Results live under ``<--out>/<machine>/<sha>/<request>/`` (``<request>``: a hash of the run
config, kernel, generations and cases); a complete stored result for the same request is
reused and a failed one recomputed, so a history is resumed or extended by running it again. The page
``<--out>/<machine>/index.html`` has one chart per series (latency per point, VMEM per
generation) against the commits, the steps and status changes marked, and a table of the
events with the commit that introduced each. ``--steps`` bisects between a good first and a
bad last revision instead of measuring every commit. Exit: 0, 1 when a regression was
found, 2 on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from rpa_bench.commands._hydra import compose_run
from rpa_bench.commands.compile import case_batches
from rpa_bench.kernels import compiling
from rpa_bench.kernels.registry import SOURCE_BACKENDS
from rpa_bench.pipeline import history as hist
from rpa_bench.pipeline.plan import plan_from_config
from rpa_bench.reports.history_events import find_events
from rpa_bench.reports.history_report import write_history
from rpa_bench.store.revisions import load_result
from rpa_bench.workloads.model import AttentionSpec


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rpa-bench history", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Overrides for `rpa-bench run` follow `--`.")
    p.add_argument("--repo", required=True, help="a tpu-inference git checkout")
    p.add_argument("--revisions", required=True, help="A..B (A is the baseline) or a comma-separated list of refs")
    p.add_argument("--every", type=int, default=1, help="every N-th commit of a range (endpoints kept)")
    p.add_argument("--steps", action="store_true", help="bisect: the first revision that differs from the first")
    p.add_argument("--kernel", default="rpa_v3", choices=SOURCE_BACKENDS,
                   help="a kernel that loads from a tpu-inference checkout (default rpa_v3)")
    p.add_argument("--generations", default="tpu7x", help="comma-separated TPU generations to compile for ('' none)")
    p.add_argument("--cases", default="decode_8x1k", help="compile cases (see rpa-bench compile)")
    p.add_argument("--compile-timeout", type=float, default=300.0, help="seconds per compile")
    p.add_argument("--threshold", type=float, default=1.1, help="latency ratio that counts as a step (default 1.1)")
    p.add_argument("--out", default="results/history", help="history folder (default results/history)")
    p.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="ray: each revision a Ray task (one accelerator of the run's kind each; docs/cluster.md)")
    p.add_argument("--address", default=None,
                   help="with --engine ray: auto, ray://host:port or host:port (default: a local head on 127.0.0.1)")
    return p


def _request(args, overrides: list[str], repo: Path) -> tuple:
    """The run plan a revision is measured with, and the request key of its stored result."""
    config, workloads, kernels, experiment = compose_run(
        [*overrides, f"kernel={args.kernel}", f"kernel.source={repo}@HEAD", "run.progress=false"])
    plan = plan_from_config(config, workloads=workloads, kernels=kernels, experiment=experiment)
    gens = tuple(compiling.generation_kind(g.strip(), compilable=True) for g in args.generations.split(",") if g.strip())
    cases = tuple(c.strip() for c in args.cases.split(",") if c.strip())
    request = hist.HistoryRequest(kernel=args.kernel, config=hist.request_config(config), generations=gens,
                                  cases=cases, compile_timeout_s=float(args.compile_timeout))
    return config, plan, request


def _evaluate(rev: hist.Revision, repo: Path, args, base: tuple, folder: Path) -> hist.RevisionResult:
    config, plan, request = base
    source = f"{repo}@{rev.sha}"
    kernels = tuple(dataclasses.replace(k, source=source) for k in plan.kernels)
    config = {**config, "kernel": {**dict(config.get("kernel") or {}), "source": source}}
    rev_plan = dataclasses.replace(plan, kernels=kernels)

    def jobs() -> list:
        cases = case_batches(list(request.cases))
        return [compiling.CompileJob({"name": args.kernel, "source": source}, args.kernel, plan.model,
                                     AttentionSpec(), batch, g, case, False, padding)
                for g in request.generations for case, (batch, padding) in cases.items()]

    return hist.evaluate(rev, plan=rev_plan, config=config, request=request, folder=folder,
                         compile_jobs=jobs, compile_many=compiling.compile_many,
                         say=lambda m: print(m, flush=True))


def _evaluate_remote(item: tuple) -> str:
    """One revision in a Ray worker: the request is composed there again (the same config
    files and overrides), the result written to the revision's own folder (one writer each)."""
    rev, repo, args, overrides, folder = item
    _evaluate(rev, repo, args, _request(args, overrides, repo), folder)
    return str(folder)


def task_resources(platform: str) -> dict[str, float]:
    """What one revision's task needs: the accelerator its run is timed on (none off one)."""
    return {"tpu": {"TPU": 1.0}, "gpu": {"GPU": 1.0}}.get(platform, {})


def _evaluate_on_ray(revs: list, repo: Path, args, overrides: list[str], folder) -> list:
    import jax  # imports JAX: loaded when the command runs

    from rpa_bench import engine as eng  # imports Ray on use: only on this path

    cfg = eng.EngineConfig(kind="ray", address=args.address)
    platform = jax.devices()[0].platform
    resources = task_resources(platform)
    if not resources:
        print("note: --engine ray off an accelerator: revisions run side by side on CPUs and their timings share "
              "the machines' cores; compare them on a cluster with one accelerator per task", flush=True)
    items = [(r, repo, args, overrides, folder(r)) for r in revs]
    for index, res in eng.map_as_completed(_evaluate_remote, items, cfg, resources=resources, memory_gib=None):
        rev = revs[index]
        if isinstance(res, eng.TaskFailure):
            raise RuntimeError(f"the Ray task for {rev.short} failed: {res.error}")
        print(f"  {rev.short} {rev.subject[:60]}: done (Ray task)", flush=True)
    out = [load_result(folder(r), r) for r in revs]
    return [r for r in out if r is not None]


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    overrides: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, overrides = argv[:i], argv[i + 1:]
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    err = lambda m: print(f"rpa-bench history: {m}", file=sys.stderr)  # noqa: E731
    try:
        repo = hist.git_toplevel(Path(args.repo).expanduser().resolve())
        revs = hist.revisions(repo, args.revisions, every=args.every)
        for g in [g for g in args.generations.split(",") if g.strip()]:
            compiling.generation_kind(g.strip(), compilable=True)
        if not args.threshold > 1.0:
            raise ValueError(f"--threshold={args.threshold} must be > 1")
        if args.engine == "ray" and args.steps:
            raise ValueError("--steps bisects one revision after another; allowed with --engine local only")
        if args.address is not None:
            from rpa_bench.engine import EngineConfig  # the engine's own check of the address, one line

            EngineConfig(kind="ray", address=args.address)
    except (ValueError, FileNotFoundError) as e:
        err(str(e))
        return 2
    try:
        base = _request(args, overrides, repo)
    except ValueError as e:
        err(str(e))
        return 2
    key = base[2].key()
    root = Path(args.out) / hist.machine_name()
    print(f"history of {args.kernel} in {repo}: {len(revs)} revisions -> {root} (request {key})")
    if len(revs) == 1:
        print(f"note: --revisions={args.revisions} names one revision ({revs[0].short}): nothing to compare it "
              "with; give A..B with B after A, or a comma-separated list")

    def folder(rev: hist.Revision) -> Path:
        return root / rev.sha / key

    try:
        if args.steps:
            first = _evaluate(revs[0], repo, args, base, folder(revs[0]))

            def is_bad(rev: hist.Revision) -> bool:
                res = _evaluate(rev, repo, args, base, folder(rev))
                return bool(find_events([first, res], threshold=args.threshold))

            found = hist.bisect(revs, is_bad)
            results = [load_result(folder(r), r) for r in revs]
            results = [r for r in results if r is not None]
            print(f"first revision that differs from {revs[0].short}: "
                  + (f"{found.short} {found.subject}" if found else "none (or the last one does not differ)"))
        elif args.engine == "ray":
            results = _evaluate_on_ray(revs, repo, args, overrides, folder)
        else:
            results = [_evaluate(r, repo, args, base, folder(r)) for r in revs]
    except RuntimeError as e:
        err(str(e))
        return 1
    events = find_events(results, threshold=args.threshold)

    page = write_history(results, events, root, kernel=args.kernel, repo=str(repo))
    (root / "events.json").write_text(json.dumps([e.as_dict() for e in events], indent=1, default=str))
    for e in events:
        print(f"  {e.direction:<11} {e.kind:<12} {e.series}: {e.before} -> {e.after} at {e.revision.short} "
              f"({e.revision.subject[:60]})")
    print(f"{len(events)} events over {len(results)} revisions; wrote {page}")
    return 1 if any(e.direction == "regression" for e in events) else 0
