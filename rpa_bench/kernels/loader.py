"""Loading the RPA kernel modules: the installed release, a local checkout, or a git revision.

``tpu_inference``'s package ``__init__`` imports vLLM, which the kernels never use. So the
kernels are loaded with every package level registered as a *bare* package (its
``__path__`` points at the real folder, its ``__init__`` never runs); modules below are
loaded from their files as usual.

``source`` selects the code:

- ``None``: the installed ``tpu-inference`` release, under its own name ``tpu_inference``;
- ``"/path/to/checkout"``: the working tree of a checkout (a folder holding
  ``tpu_inference/``), under a private namespace ``rpa_bench_src_<hash>``;
- ``"/path/to/checkout@<ref>"``: that git ref, exported with ``git archive`` into a cache
  folder (``$RPA_BENCH_CACHE_DIR`` or ``~/.cache/rpa_bench``) ``revisions/<sha>``, under
  the namespace ``rpa_bench_rev_<sha12>``.

Private namespaces rewrite the code's absolute ``tpu_inference`` imports to themselves, so
a release and any number of revisions coexist in one process. Provenance records exactly
where the code came from: version or path, git commit, dirty flag, sha256 of kernel.py.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path
from types import ModuleType

from rpa_bench.generations import BY_KIND
from rpa_bench.kernels.base import KernelProvenance

PACKAGE = "tpu_inference"
DISTRIBUTION = "tpu-inference"
KERNEL_MODULES = {
    "v3": "kernels.ragged_paged_attention.v3.kernel",
    "v2": "kernels.ragged_paged_attention.v2.kernel",
}
JAX_RPA_MODULE = "jax.experimental.pallas.ops.tpu.ragged_paged_attention.kernel"

_lock = threading.RLock()
_loaded: dict[tuple[str | None, str | None], "LoadedSource"] = {}
_loaded_sha256: dict[str, str] = {}  # file -> sha256 of the bytes actually executed


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A parsed ``kernel.source``: installed release (path None), a checkout, or checkout@ref."""

    path: Path | None = None
    ref: str | None = None

    @classmethod
    def parse(cls, source: str | None) -> "SourceSpec":
        if source is None or str(source).strip() in ("", "null", "None", "installed"):
            return cls()
        text = str(source).strip()
        path_text, ref = text, None
        if not Path(os.path.expanduser(text)).exists() and "@" in text:
            path_text, _, ref = text.rpartition("@")
            if not ref:
                raise ValueError(f"kernel.source={text!r}: empty git ref after '@'")
        path = Path(os.path.expanduser(path_text)).resolve()
        if not path.is_dir():
            raise ValueError(
                f"kernel.source={text!r}: {str(path)!r} is not a folder; allowed: null (installed "
                f"{DISTRIBUTION}), a checkout folder holding {PACKAGE}/, or <checkout>@<git ref>"
            )
        return cls(path, ref)


@dataclasses.dataclass(frozen=True)
class LoadedSource:
    """One loaded copy of the ``tpu_inference`` kernels and where it came from."""

    namespace: str  # top-level module name the package is loaded under
    package_dir: Path  # the folder loaded as the package (…/tpu_inference)
    source: str | None  # as given (None: installed release)
    source_path: str | None  # checkout folder (None: installed release)
    version: str | None  # installed distribution version (None for checkouts)
    git_ref: str | None
    git_commit: str | None  # resolved commit sha (None: not a git checkout)
    git_dirty: bool | None  # uncommitted changes under tpu_inference/ (False for @ref)

    def kernel_file(self, version: str) -> Path:
        return self.package_dir.joinpath(*_module_rel(version).split(".")).with_suffix(".py")

    def module(self, version: str) -> ModuleType:
        """Import ``<namespace>.kernels.ragged_paged_attention.<version>.kernel``."""
        name = f"{self.namespace}.{_module_rel(version)}"
        with _lock:
            return importlib.import_module(name)

    def provenance(self, version: str, kernel: str) -> KernelProvenance:
        path = self.kernel_file(version)
        return KernelProvenance(
            kernel=kernel, package=DISTRIBUTION, version=self.version, source=self.source,
            source_path=self.source_path, git_ref=self.git_ref, git_commit=self.git_commit,
            git_dirty=self.git_dirty, module=f"{self.namespace}.{_module_rel(version)}",
            kernel_file=str(path), kernel_sha256=_loaded_sha256.get(str(path)) or file_sha256(path))


def _check_version(version: str) -> str:
    """A short name of :data:`KERNEL_MODULES`, or a module path inside the package
    (``kernels.experimental.batched_rpa.wrapper``: what a kernel's declaration names)."""
    if version not in KERNEL_MODULES and not version.startswith("kernels."):
        raise ValueError(f"kernel version {version!r} unknown; allowed: {', '.join(KERNEL_MODULES)} "
                         "or a module path kernels.<...> inside the package")
    return version


def _module_rel(version: str) -> str:
    return KERNEL_MODULES.get(_check_version(version), version)


def file_sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- import machinery ------------------------------------------------------------------
class _BarePackageLoader(importlib.abc.Loader):
    """A package whose ``__init__`` is deliberately not run."""

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        return None


class _ImportRewriter(ast.NodeTransformer):
    """Point absolute imports of ``tpu_inference`` at a private namespace."""

    def __init__(self, namespace: str):
        self.namespace = namespace

    def _rename(self, name: str) -> str:
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            return self.namespace + name[len(PACKAGE):]
        return name

    def visit_ImportFrom(self, node: ast.ImportFrom):
        if node.level == 0 and node.module:
            node.module = self._rename(node.module)
        return node

    def visit_Import(self, node: ast.Import):
        extra = []
        for alias in node.names:
            new = self._rename(alias.name)
            if new != alias.name and alias.asname is None:
                # `import tpu_inference.x` binds the name `tpu_inference`: bind it to the namespace.
                extra.append(ast.Assign(targets=[ast.Name(PACKAGE, ast.Store())], value=ast.Name(self.namespace, ast.Load())))
            alias.name = new
        return [node, *extra] if extra else node


class _NamespaceLoader(importlib.machinery.SourceFileLoader):
    """Load a module from source with its ``tpu_inference`` imports rewritten (no bytecode cache)."""

    def __init__(self, fullname: str, path: str, namespace: str):
        super().__init__(fullname, path)
        self.namespace = namespace

    def get_code(self, fullname):
        path = self.get_filename(fullname)
        data = self.get_data(path)
        _loaded_sha256[str(Path(path))] = hashlib.sha256(data).hexdigest()
        tree = ast.parse(data, filename=path)
        if self.namespace != PACKAGE:
            tree = ast.fix_missing_locations(_ImportRewriter(self.namespace).visit(tree))
        return compile(tree, path, "exec", dont_inherit=True)


class _StdlibLoggerLoader(importlib.abc.Loader):
    """``<namespace>.logger`` without vLLM: ``init_logger(name)`` is ``logging.getLogger``."""

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        import logging

        class _OnceLogger(logging.LoggerAdapter):  # vLLM's logger adds the *_once methods
            def _once(self, level, msg, *args):
                key = (level, msg, args)
                if key not in _said:
                    _said.add(key)
                    self.log(level, msg, *args)

            def warning_once(self, msg, *args, **_):
                self._once(logging.WARNING, msg, *args)

            def info_once(self, msg, *args, **_):
                self._once(logging.INFO, msg, *args)

            def debug_once(self, msg, *args, **_):
                self._once(logging.DEBUG, msg, *args)

        _said: set = set()
        module.init_logger = lambda name: _OnceLogger(logging.getLogger(name), {})


class _DeviceNameLoader(importlib.abc.Loader):
    """``<namespace>.utils`` without torch: ``get_device_name`` of the attached TPU, named as
    the package names it (the generations table's ``upstream_name``; the tuned tables' keys)."""

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        import jax

        def get_device_name(num_devices=None):
            kind = jax.devices()[0].device_kind
            if kind not in BY_KIND:
                raise RuntimeError(f"Expected TPU devices (this is {kind!r})")
            return BY_KIND[kind].upstream_name + (f"-{num_devices}" if num_devices else "")

        module.get_device_name = get_device_name


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds modules of registered namespaces: packages bare, modules from their files."""

    def __init__(self):
        self.roots: dict[str, Path] = {}  # namespace -> package folder

    def find_spec(self, fullname, path=None, target=None):
        namespace, *parts = fullname.split(".")
        root = self.roots.get(namespace)
        if root is None:
            return None
        if parts == ["logger"] and importlib.util.find_spec("vllm") is None:
            # the package's logger wraps vLLM's (which the kernels never need): stdlib logging
            return importlib.machinery.ModuleSpec(fullname, _StdlibLoggerLoader())
        if parts == ["utils"] and importlib.util.find_spec("torch") is None:
            # the package's utils import torch / torchax; the kernels take only get_device_name
            return importlib.machinery.ModuleSpec(fullname, _DeviceNameLoader())
        where = root.joinpath(*parts)
        if where.is_dir():
            spec = importlib.machinery.ModuleSpec(fullname, _BarePackageLoader(), is_package=True)
            spec.submodule_search_locations = [str(where)]
            return spec
        file = where.with_suffix(".py")
        if file.is_file():
            return importlib.util.spec_from_file_location(
                fullname, file, loader=_NamespaceLoader(fullname, str(file), namespace)
            )
        return None


_finder = _SourceFinder()


def _register(namespace: str, package_dir: Path) -> None:
    with _lock:
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
        _finder.roots[namespace] = package_dir


# --- sources ---------------------------------------------------------------------------
def installed_package_dir() -> Path | None:
    """Folder of the *installed* ``tpu_inference`` package (found without importing it).

    Taken from the distribution's own record, never from ``sys.path``: a ``tpu_inference/``
    folder in the working directory must not stand in for the installed release.
    """
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    where = Path(str(dist.locate_file(PACKAGE)))
    return where if (where / "kernels").is_dir() else None


def installed_version() -> str | None:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def availability(source: str | None = None) -> tuple[bool, str]:
    """(available, reason) for loading the tpu-inference kernels from ``source``."""
    try:
        spec = SourceSpec.parse(source)
    except ValueError as e:
        return False, str(e)
    if spec.path is None:
        if installed_package_dir() is None:
            return False, f"{DISTRIBUTION} is not installed (pip install --no-deps {DISTRIBUTION})"
        return True, f"{DISTRIBUTION} {installed_version()}"
    if spec.ref is None and not _package_dir(spec.path).is_dir():
        return False, f"kernel.source={source!r} holds no {PACKAGE}/ folder"
    if spec.ref is not None:
        try:
            sha = _resolve_ref(spec, source)
            toplevel = _git_toplevel(spec.path)
            rel = os.path.relpath(_package_dir(spec.path), toplevel)
            _git(toplevel, "cat-file", "-e", f"{sha}:{rel}")
        except (ValueError, FileNotFoundError) as e:
            msg = str(e).splitlines()[0] if str(e) else "git ref not found"
            return False, msg if msg.startswith("kernel.source=") else f"kernel.source={source!r}: {msg}"
    return True, str(source)


def _package_dir(root: Path) -> Path:
    return root if root.name == PACKAGE and (root / "kernels").is_dir() else root / PACKAGE


def _git(cwd: Path, *args: str, stdout_bytes: bool = False):
    out = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, check=False)
    if out.returncode:
        raise ValueError(f"git {' '.join(args)} in {cwd} failed: {out.stderr.decode().strip()}")
    return out.stdout if stdout_bytes else out.stdout.decode().strip()


def _git_toplevel(path: Path) -> Path | None:
    try:
        return Path(_git(path, "rev-parse", "--show-toplevel"))
    except (ValueError, FileNotFoundError):
        return None


def cache_dir() -> Path:
    base = os.environ.get("RPA_BENCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rpa_bench"
    )
    return Path(base)


def _export_revision(repo: Path, sha: str, package_rel: str) -> Path:
    """``git archive`` the package folder of commit ``sha`` into the cache (once)."""
    dest = cache_dir() / "revisions" / sha
    if (dest / PACKAGE).is_dir():
        if _export_matches(repo, sha, package_rel, dest / PACKAGE):
            return dest
        shutil.rmtree(dest, ignore_errors=True)  # edited or damaged: export the commit again
    dest.parent.mkdir(parents=True, exist_ok=True)
    blob = _git(repo, "archive", "--format=tar", sha, "--", package_rel, stdout_bytes=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=dest.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(tmp, filter="data")
        extracted = tmp / package_rel
        (tmp / "tree").mkdir()
        shutil.move(str(extracted), str(tmp / "tree" / PACKAGE))
        try:
            os.rename(tmp / "tree", dest)
        except OSError:  # another process exported it first
            if not (dest / PACKAGE).is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _git_blob_sha1(data: bytes) -> str:
    """Git's object id of a file's bytes (``git hash-object``): sha1 of ``blob <len>\\0<data>``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _export_matches(repo: Path, sha: str, package_rel: str, package_dir: Path) -> bool:
    """Whether a cached export holds exactly the files of commit ``sha`` (checked by git object ids)."""
    listing = _git(repo, "ls-tree", "-r", sha, "--", package_rel)
    want = {}
    for line in listing.splitlines():
        meta, _, path = line.partition("\t")
        want[os.path.relpath(path, package_rel)] = meta.split()[2]
    have = {}
    for file in package_dir.rglob("*"):
        if file.is_file():
            have[str(file.relative_to(package_dir))] = _git_blob_sha1(file.read_bytes())
    return have == want


def load_source(source: str | None = None) -> LoadedSource:
    """Register (once) and describe the kernel package from ``source`` (see module doc)."""
    spec = SourceSpec.parse(source)
    sha = _resolve_ref(spec, source) if spec.ref is not None else None  # a moving ref is re-resolved
    key = (str(spec.path) if spec.path else None, spec.ref, sha)
    with _lock:
        if key in _loaded:
            return _loaded[key]
        loaded = _load(spec, source, sha)
        _loaded[key] = loaded
        return loaded


def _resolve_ref(spec: SourceSpec, source: str | None) -> str:
    toplevel = _git_toplevel(spec.path)
    if toplevel is None:
        raise ValueError(f"kernel.source={source!r}: {spec.path} is not inside a git checkout")
    return _git(toplevel, "rev-parse", "--verify", f"{spec.ref}^{{commit}}")


def _load(spec: SourceSpec, source: str | None, sha: str | None) -> LoadedSource:
    if spec.path is None:
        package_dir = installed_package_dir()
        if package_dir is None:
            raise ValueError(f"kernel.source=null but {DISTRIBUTION} is not installed")
        if not _is_real_package(sys.modules.get(PACKAGE)):
            _register(PACKAGE, package_dir)
        return LoadedSource(PACKAGE, package_dir, None, None, installed_version(), None, None, None)

    package_dir = _package_dir(spec.path)
    toplevel = _git_toplevel(spec.path)
    if spec.ref is None:
        if not package_dir.is_dir():
            raise ValueError(f"kernel.source={source!r}: no {PACKAGE}/ folder in {spec.path}")
        commit = dirty = None
        if toplevel is not None:
            commit = _git(toplevel, "rev-parse", "HEAD")
            dirty = bool(_git(toplevel, "status", "--porcelain", "--", str(package_dir)))
        namespace = "rpa_bench_src_" + hashlib.sha256(str(package_dir).encode()).hexdigest()[:12]
        _register(namespace, package_dir)
        return LoadedSource(namespace, package_dir, source, str(spec.path), None, None, commit, dirty)

    package_rel = os.path.relpath(package_dir, toplevel)
    export = _export_revision(toplevel, sha, package_rel)
    namespace = f"rpa_bench_rev_{sha[:12]}"
    _register(namespace, export / PACKAGE)
    return LoadedSource(namespace, export / PACKAGE, source, str(spec.path), None, spec.ref, sha, False)


def _is_real_package(module: ModuleType | None) -> bool:
    """A ``tpu_inference`` imported normally (its ``__init__`` ran), e.g. on a serving host."""
    return module is not None and not isinstance(getattr(module, "__loader__", None), _BarePackageLoader)


def kernel_module(version: str, source: str | None = None) -> ModuleType:
    """The tpu-inference RPA ``kernel`` module of ``version`` ("v3", "v2") from ``source``."""
    return load_source(source).module(version)


def jax_rpa_module() -> ModuleType:
    """JAX's own ragged paged attention kernel module."""
    return importlib.import_module(JAX_RPA_MODULE)


def jax_rpa_provenance(kernel: str = "jax_rpa") -> KernelProvenance:
    import jax

    module = jax_rpa_module()
    return KernelProvenance(kernel=kernel, package="jax", version=jax.__version__, module=JAX_RPA_MODULE,
                            kernel_file=module.__file__, kernel_sha256=file_sha256(module.__file__))
