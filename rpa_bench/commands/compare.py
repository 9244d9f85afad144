"""``rpa-bench compare``: two stored runs (revision A vs B) or two kernels of one run.

    rpa-bench compare results/A results/B [--threshold 1.1] [--alpha 0.05] [--out DIR]
    rpa-bench compare results/RUN --kernels KERNEL_A KERNEL_B

Exit status: 1 when some point is significantly slower in B beyond the threshold, 0
otherwise, 2 for bad input (not a results run, unreadable measurements, unknown kernel, no
point in common, no comparable point).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from rpa_bench.paths import output_folder_problem
from rpa_bench.names import slug
from rpa_bench.measure.environment import flag_differences
from rpa_bench.measure.compare import CompareOptions, compare_kernels, compare_measurements
from rpa_bench.reports.compare_report import manifest_differences, write_compare
from rpa_bench.reports.sweep_report import sweep_jobs, swept_values
from rpa_bench.store.load import NotARunError, load_run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rpa-bench compare",
                                description="Compare median latencies of two runs, or of two kernels in one run.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run A and run B (or one run with --kernels)")
    p.add_argument("--kernels", nargs=2, metavar=("KERNEL_A", "KERNEL_B"), help="kernel vs kernel within one run")
    p.add_argument("--threshold", type=float, default=1.1, help="ratio beyond which a change counts (default 1.1)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of Mann-Whitney U (default 0.05)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples for the ratio CI")
    p.add_argument("--out", default=None, help="output folder (default <run B>/compare-<run A>/)")
    p.add_argument("--across-flags", action="store_true",
                   help="compare runs (or rows) whose compiler/runtime flags differ; every page names the flags")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON (summary and every point)")
    return p




def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    said: list[str] = []

    def err(msg: str) -> None:
        said.append(msg)
        print(f"rpa-bench compare: {msg}", file=sys.stderr)

    rc = _main(args, err)
    if rc == 2 and args.json:  # one rule: a failure under --json is a JSON object on stdout
        errors = [m for m in said if not m.startswith("warning:")]
        print(json.dumps({"error": errors[-1] if errors else "failed", "exit": rc}))
    return rc


def _main(args: argparse.Namespace, err) -> int:
    problem = output_folder_problem(args.out, "--out")
    if problem:
        err(problem)
        return 2
    if args.kernels and len(args.runs) != 1:
        err(f"--kernels takes exactly one run, got {len(args.runs)}")
        return 2
    if not args.kernels and len(args.runs) != 2:
        err(f"give two runs (A and B), or one run with --kernels; got {len(args.runs)}")
        return 2
    try:
        options = CompareOptions(threshold=args.threshold, alpha=args.alpha, n_resamples=args.resamples,
                                 across_flags=args.across_flags)
        if not args.kernels and all(_is_sweep(Path(r)) for r in args.runs):
            return _compare_sweeps(Path(args.runs[0]), Path(args.runs[1]), options, args, err)
        sweeps = [r for r in args.runs if _is_sweep(Path(r))]
        if sweeps and not args.kernels:
            raise ValueError(f"{sweeps[0]} is a sweep folder ({len(sweep_jobs(Path(sweeps[0])))} jobs), the other "
                             "side a run: compare two sweeps, or name one job of the sweep (<sweep>/<job>)")
        runs = [load_run(r) for r in args.runs]
    except (NotARunError, ValueError) as e:
        err(str(e))
        return 2
    for run in runs:
        for problem in run.problems:
            err(f"warning: {run.name}: {problem}")
        if run.measurements.empty:
            err(f"{run.name} has no readable measurements"
                + (f" ({run.problems[-1]})" if run.problems else "") + ": nothing to compare")
            return 2
    flag_diffs: list[str] = []
    if args.kernels:
        run = runs[0]
        ka, kb = args.kernels
        try:
            result = compare_kernels(run.measurements, ka, kb, options)
        except ValueError as e:
            err(str(e))
            return 2
        side_a, side_b, device, diffs = f"{run.name}:{ka}", f"{run.name}:{kb}", run.device, None
        out = args.out or run.path / f"compare-{slug(ka)}-vs-{slug(kb)}"
    else:
        a, b = runs
        result, flag_diffs = _compare_runs(a, b, options)
        side_a, side_b = a.name, b.name
        device = a.device if a.device == b.device else f"{a.device} (A) / {b.device} (B)"
        diffs = manifest_differences(a, b)
        out = args.out or b.path / f"compare-{slug(a.name)}"
    if result.empty or (result["reason"].fillna("").str.contains(" only$").all()):
        err("the two sides share no workload point: nothing to compare")
        return 2
    banners = (result.attrs["warning"],) if "warning" in result.attrs else ()
    if flag_diffs and args.across_flags:
        banners = (*banners, f"The runs differ in compiler/runtime flags ({', '.join(flag_diffs)}): compared "
                             "anyway (--across-flags); a difference may come from the flags, not the kernel.")
    output = write_compare(result, out, side_a=side_a, side_b=side_b, device=device, options=options,
                           differences=diffs, banners=banners)
    s = output.summary
    counts = ", ".join(f"{m}: {n}" for m, n in s.counts.items())
    geo = "n/a" if s.geomean_ratio is None else f"{s.geomean_ratio:.3f}x"
    if args.json:
        points = json.loads(result.drop(columns=[c for c in result.columns if c.startswith("_")])
                            .to_json(orient="records"))
        print(json.dumps({"a": side_a, "b": side_b, "counts": s.counts, "geomean_ratio": s.geomean_ratio,
                          "exit_status": 2 if s.num_comparable == 0 else s.exit_status,
                          "flag_differences": flag_diffs, "across_flags": bool(args.across_flags),
                          "report": str(output.index_html), "points": points}, indent=1, default=str))
        if s.num_comparable == 0:
            err("no point is comparable" + (f" (different compiler/runtime flags: {', '.join(flag_diffs)}; "
                                            "--across-flags compares them anyway)" if flag_diffs else ""))
            return 2
        return s.exit_status
    print(f"{side_b} vs {side_a}: {counts}; geometric mean B/A {geo}")
    for name, run in ((side_a, runs[0]), (side_b, runs[-1])):
        env = run.manifest.get("environment") or {}
        load = env.get("load_average")
        if load and not args.kernels:
            print(f"  {name}: host load average at start {load[0]:.2f} (1 min), at end "
                  f"{(run.manifest.get('load_average_end') or ['?'])[0]}")
    if not result.empty and "spread_a" in result.columns:
        comparable = result[result["mark"] != "not comparable"]
        if not comparable.empty:
            print(f"  noise: median spread (IQR/median) A {comparable['spread_a'].median():.1%}, "
                  f"B {comparable['spread_b'].median():.1%}; "
                  f"{int(comparable['paired'].fillna(False).astype(bool).sum())} of {len(comparable)} points paired "
                  "(interleaved in one run)")
    if not args.kernels and any(r.measurements.get("sample_order") is not None
                                and r.measurements["sample_order"].notna().any() for r in runs):
        print("  note: a run here measured its kernels interleaved: `rpa-bench compare RUN --kernels A B` on it "
              "gives paired, drift-free evidence; prefer it to comparing two runs")
    notes = result["note"].dropna().unique() if "note" in result.columns else []
    for n in list(notes)[:3]:
        err(f"note: {n}")
    for _, row in result[result["mark"] == "worse"].iterrows():
        print(f"  worse: {row['workload']} {row['point_id']} {row['kernel']} {row['variant']}: "
              f"{row['ratio']:.3f}x (CI {row['ci_low']:.3f}-{row['ci_high']:.3f}, p={row['p_value']:.2g})")
    if s.flagged_unstable:
        err(f"warning: {s.flagged_unstable} flagged point(s) have unstable samples on a side (noisy host)")
    print(f"wrote {output.index_html}")
    if s.num_comparable == 0:  # a verdict needs at least one comparable point: bad input for a CI job
        if flag_diffs and not args.across_flags:
            err(f"the runs differ in compiler/runtime flags ({', '.join(flag_diffs)}): not comparable; "
                "--across-flags compares them anyway")
            return 2
        reasons = result["reason"].fillna("").value_counts()
        err(f"none of the {len(result)} points is comparable ("
            + "; ".join(f"{n}x {r}" for r, n in reasons.head(3).items()) + ")")
        return 2
    return s.exit_status


def _compare_runs(a, b, options: CompareOptions) -> tuple[pd.DataFrame, list[str]]:
    """Run B vs run A point by point; runs whose compiler/runtime flags differ are not
    comparable unless ``options.across_flags`` (the differing flags are returned)."""
    flags = flag_differences(a.manifest.get("flags"), b.manifest.get("flags"))
    result = compare_measurements(a.measurements, b.measurements, options)
    if flags and not options.across_flags and not result.empty:
        result = result.assign(mark="not comparable", reason=f"different compiler/runtime flags: {', '.join(flags)}")
    return result, flags


def _is_sweep(path: Path) -> bool:
    return path.is_dir() and not (path / "manifest.json").is_file() and bool(sweep_jobs(path))


def _compare_sweeps(a_dir: Path, b_dir: Path, options: CompareOptions, args: argparse.Namespace, err) -> int:
    """Two sweeps (``run -m``): jobs paired by their override names, compared job by job, on
    one page with the job and its swept values as the first columns."""
    a_jobs, b_jobs = {p.name: p for p in sweep_jobs(a_dir)}, {p.name: p for p in sweep_jobs(b_dir)}
    common = sorted(set(a_jobs) & set(b_jobs))
    if not common:
        err(f"the sweeps share no job (A: {', '.join(sorted(a_jobs))}; B: {', '.join(sorted(b_jobs))}): "
            "nothing to compare")
        return 2
    frames, keys = [], []
    for name in common:
        result, _ = _compare_runs(load_run(a_jobs[name]), load_run(b_jobs[name]), options)
        swept = swept_values(name)
        keys += [k for k in swept if k not in keys]
        frames.append(result.assign(job=name, **swept))
    only = sorted(set(a_jobs) ^ set(b_jobs))
    result = pd.concat(frames, ignore_index=True)
    out = args.out or b_dir / f"compare-{slug(a_dir.name)}"
    banners = (f"jobs in one sweep only (not compared): {', '.join(only)}",) if only else ()
    output = write_compare(result, out, side_a=a_dir.name, side_b=b_dir.name, device="see each job",
                           options=options, banners=banners, leading=("job", *keys))
    s = output.summary
    status = 2 if s.num_comparable == 0 else s.exit_status
    if args.json:
        points = json.loads(result.drop(columns=[c for c in result.columns if c.startswith("_")])
                            .to_json(orient="records"))
        print(json.dumps({"a": str(a_dir), "b": str(b_dir), "jobs": common, "jobs_one_side": only,
                          "counts": s.counts, "geomean_ratio": s.geomean_ratio, "exit_status": status,
                          "report": str(output.index_html), "points": points}, indent=1, default=str))
    else:
        geo = "n/a" if s.geomean_ratio is None else f"{s.geomean_ratio:.3f}x"
        print(f"sweep {b_dir.name} vs {a_dir.name}: {len(common)} jobs, "
              + ", ".join(f"{m}: {n}" for m, n in s.counts.items()) + f"; geometric mean B/A {geo}")
        print(f"report: {output.index_html}")
    if s.num_comparable == 0:
        err("no point is comparable")
    return status
