"""A kernel's history across tpu-inference commits (asv's idea, for RPA revisions).

For each revision of a checkout, the same run plan is measured with the kernel loaded from
``<repo>@<sha>`` (correctness checked on every point; timed where the device allows) and
the kernel is compiled for TPU generations (libtpu compile-only: does it still compile and
fit VMEM?). A revision's result is stored under ``<out>/<machine>/<sha>/<request>/``, where
``<request>`` is a hash of everything that determines the result (the run config without
its output-only settings, the kernel, the generations and cases compiled); a stored,
complete result for the same request is reused, a failed one is recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from rpa_bench.pipeline.plan import RunPlan
from rpa_bench.pipeline.run import run_plan
from rpa_bench.pipeline.run_folder import VOLATILE_RUN_KEYS
from rpa_bench.store.revisions import Revision, RevisionResult, load_result

def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if out.returncode:
        raise ValueError(f"git {' '.join(args)} in {repo}: {out.stderr.strip() or 'failed'}")
    return out.stdout.strip()


def git_toplevel(path: Path) -> Path:
    """``path`` itself must be a checkout's top level: a folder inside another repository is
    not taken for that repository (``--repo`` names the tpu-inference checkout itself)."""
    if not path.is_dir():
        raise ValueError(f"--repo={path}: not a folder")
    try:
        top = Path(_git(path, "rev-parse", "--show-toplevel")).resolve()
    except ValueError:
        raise ValueError(f"--repo={path}: not a git checkout") from None
    if top != path.resolve():
        raise ValueError(f"--repo={path}: not a git checkout's top level (it lies inside {top}); name the "
                         "tpu-inference checkout itself")
    return top


def revisions(repo: Path, spec: str, *, every: int = 1) -> list[Revision]:
    """``A..B`` (A excluded, as git does; both endpoints kept here: A is the baseline), or a
    comma-separated list of refs, oldest first; ``every``: every N-th commit of a range
    (the endpoints always kept)."""
    if every < 1:
        raise ValueError(f"--every={every} must be >= 1")
    if ".." in spec:
        a, b = spec.split("..", 1)
        shas = _git(repo, "rev-list", "--reverse", "--first-parent", f"{a}..{b}").split()
        base = _git(repo, "rev-parse", "--verify", f"{a}^{{commit}}")
        shas = [base, *shas]
        if every > 1:
            keep = shas[::every]
            if keep[-1] != shas[-1]:
                keep.append(shas[-1])
            shas = keep
    else:
        shas = [_git(repo, "rev-parse", "--verify", f"{r.strip()}^{{commit}}") for r in spec.split(",") if r.strip()]
    if not shas:
        raise ValueError(f"--revisions={spec!r} names no commit")
    out = []
    for sha in shas:
        date, subject = _git(repo, "show", "-s", "--format=%cI%x00%s", sha).split("\x00", 1)
        out.append(Revision(sha, date, subject))
    return out


def machine_name() -> str:
    return f"{socket.gethostname()}-{platform.machine()}"



def bisect(revs: Sequence[Revision], is_bad: Callable[[Revision], bool]) -> Revision | None:
    """The first bad revision of ``revs`` (first good, last bad), testing O(log n) of them."""
    lo, hi = 0, len(revs) - 1
    if is_bad(revs[lo]) or not is_bad(revs[hi]):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if is_bad(revs[mid]):
            hi = mid
        else:
            lo = mid
    return revs[hi]




@dataclasses.dataclass(frozen=True)
class HistoryRequest:
    """Everything that determines a revision's result, besides the revision itself."""

    kernel: str
    config: dict  # the composed run config, output-only settings removed
    generations: tuple[str, ...]
    cases: tuple[str, ...]
    compile_timeout_s: float

    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def request_config(config: dict) -> dict:
    """The run config without what does not change the result (folders, names, progress)."""
    out = json.loads(json.dumps(config, default=str))
    out["run"] = {k: v for k, v in dict(out.get("run") or {}).items() if k not in VOLATILE_RUN_KEYS}
    out.pop("composed", None)
    if isinstance(out.get("kernel"), dict):
        out["kernel"].pop("source", None)  # the revision: keyed apart
    return out


def evaluate(rev: Revision, *, plan: RunPlan, config: dict, request: HistoryRequest, folder: Path,
             compile_jobs: Callable[[], list], compile_many: Callable[..., list],
             say: Callable[[str], None] = print) -> RevisionResult:
    """``rev``'s result for ``request``: reused when stored complete for the same request,
    recomputed when it failed before (a failure may be environmental), else measured: the
    run plan (the kernel loaded from the revision) into ``folder/run``, then the compiles."""
    meta = folder / "revision.json"
    stored = load_result(folder, rev)
    if stored is not None:
        say(f"  {rev.short} {rev.subject[:60]}: stored for this request ({request.key()}), not recomputed")
        return stored
    if meta.is_file():
        before = json.loads(meta.read_text()).get("status")
        say(f"  {rev.short} {rev.subject[:60]}: stored result is {before!r}; recomputing")
    folder.mkdir(parents=True, exist_ok=True)
    say(f"  {rev.short} {rev.subject[:60]}: run + compile")
    try:
        run_plan(plan, config, run_dir=folder / "run", run_id=f"{rev.short}-run")
    except Exception as exc:
        meta.write_text(json.dumps({"status": "failed", "error": f"{type(exc).__name__}: {exc}", "sha": rev.sha,
                                    "request": dataclasses.asdict(request)}, default=str))
        raise RuntimeError(f"the run for {rev.short} failed: {type(exc).__name__}: {exc}") from exc
    compiles = [r.as_dict() for r in compile_many(compile_jobs(), timeout_s=request.compile_timeout_s)] \
        if request.generations else []
    meta.write_text(json.dumps({"status": "complete", "sha": rev.sha, "date": rev.date, "subject": rev.subject,
                                "request_key": request.key(), "request": dataclasses.asdict(request),
                                "compiles": compiles}, indent=1, default=str))
    return load_result(folder, rev)
