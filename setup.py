"""Compiles edgeproxy's hot path with mypyc where it can; everything else is in pyproject.toml.

The modules of ``edgeproxy.build.COMPILED`` become C extensions installed next to their ``.py``
sources, plus ``edgeproxy/compiled.stamp`` (what compiled them, the sources' digest) that
edgeproxy/build.py reads at run time. The install never fails for want of a compiler: with
``EDGEPROXY_PURE_PYTHON=1`` set, without mypyc, or when compiling fails (no gcc, no Python
headers, CC=/bin/false), it says why on stderr and installs the pure-Python package.

With ``EDGEPROXY_BUILD_CACHE=<directory>`` set (CI sets it: the directory outlives the clone), a
build is kept there under a digest of everything that goes into it (every source of the package,
setup.py, pyproject.toml, the Python, mypy, the C compiler and its flags), and a later build of
the same inputs reuses its extensions instead of running mypyc and gcc again (~2 minutes on 2
cores). Without the variable, or for inputs never built, it compiles as usual.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def _build_module() -> Any:
    """edgeproxy/build.py by path: importing the package would need its dependencies."""
    spec = importlib.util.spec_from_file_location("_edgeproxy_build", HERE / "edgeproxy" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _build_module()


def _say(message: str) -> None:
    print(f"edgeproxy: {message}", file=sys.stderr)


CACHE_ENV = "EDGEPROXY_BUILD_CACHE"
CACHE_KEEP = 10  # builds kept in the cache directory (~2.5 MB each), the least recently used go
MANIFEST = "extensions.txt"  # in a cached build: the extension names, one a line


def _compiler_identity() -> str:
    """The C compiler's own version line and every variable that changes how it is called."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    cc = new_compiler()
    customize_compiler(cc)
    argv = list(getattr(cc, "compiler_so", None) or ["cc"])
    try:
        version = subprocess.run([argv[0], "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        version = repr(e)
    flags = {v: os.environ.get(v, "") for v in ("CC", "CFLAGS", "CPPFLAGS", "LDFLAGS", "LDSHARED")}
    return f"{argv} {version} {sorted(flags.items())}"


def _cached_build() -> Path | None:
    """Where a build of exactly these inputs is (or goes) in the cache; None: no cache set."""
    root = os.environ.get(CACHE_ENV, "")
    if not root:
        return None
    import mypy.version

    h = hashlib.sha256()
    for path in [HERE / "setup.py", HERE / "pyproject.toml", *sorted((HERE / "edgeproxy").rglob("*.py"))]:
        h.update(str(path.relative_to(HERE)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(f"{sys.version} {sysconfig.get_config_var('EXT_SUFFIX')} mypy {mypy.version.__version__}".encode())
    h.update(_compiler_identity().encode())
    return Path(root) / h.hexdigest()[:32]


def _cached_extensions(entry: Path) -> list[str] | None:
    try:
        names = (entry / MANIFEST).read_text().split()
    except OSError:
        return None
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    return names if names and all((entry / f"{name}{suffix}").is_file() for name in names) else None


def _store(entry: Path, built: dict[str, str]) -> None:
    """Put a complete build in the cache: written aside, then renamed into place (a concurrent
    build of the same inputs may win the rename: its files are the same), then the oldest go."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
        for name, path in built.items():
            shutil.copy2(path, tmp / f"{name}{suffix}")
        (tmp / MANIFEST).write_text("".join(f"{name}\n" for name in built))
        try:
            tmp.rename(entry)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        entries = sorted((p for p in entry.parent.iterdir() if not p.name.startswith(".")), key=_mtime)
        for old in entries[:-CACHE_KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:  # a cache that cannot be written costs the next build its time, no more
        _say(f"could not keep the build in {entry.parent} ({_first_line(e)})")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class BuildOrFallBack(build_ext):
    """build_ext that installs pure Python instead of failing, and stamps a complete build.

    mypyc (a whole mypy run) is asked for the extensions only here, when they are built: pip runs
    setup.py three times (requirements, metadata, wheel) and only the last one builds.
    """

    def finalize_options(self) -> None:
        self.distribution.ext_modules = ext_modules()
        self._built: dict[str, str] = {}  # extension name -> the file compiled, for the cache
        super().finalize_options()

    def build_extension(self, ext: Any) -> None:
        cached = _hit()
        if cached is None:
            super().build_extension(ext)
            self._built[ext.name] = self.get_ext_fullpath(ext.name)
            return
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cached / f"{ext.name}{sysconfig.get_config_var('EXT_SUFFIX')}", target)

    def run(self) -> None:
        if self.inplace:  # an editable install: a previous build's stamp would keep its modules in use
            (HERE / "edgeproxy" / BUILD.STAMP).unlink(missing_ok=True)
        if not self.extensions:
            return
        try:
            super().run()
        except Exception as e:  # CompileError, LinkError, a missing compiler: all mean "no C here"
            _say(f"compiling the hot path failed ({_first_line(e)}); installing pure Python")
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            self.extensions = []
            return
        entry = _cached_build()
        if entry is not None and _hit() is None and set(self._built) == {e.name for e in self.extensions}:
            _store(entry, self._built)
        import mypy.version

        stamp = f"mypyc {mypy.version.__version__} {BUILD.sources_digest(HERE / 'edgeproxy')}\n"
        for root in {Path(self.build_lib), HERE} if self.inplace else {Path(self.build_lib)}:
            (root / "edgeproxy").mkdir(parents=True, exist_ok=True)
            (root / "edgeproxy" / BUILD.STAMP).write_text(stamp)

    def get_outputs(self) -> list[str]:
        outputs: list[str] = super().get_outputs()
        if self.extensions:
            outputs.append(str(Path(self.build_lib) / "edgeproxy" / BUILD.STAMP))
        return outputs


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def _c_compiler_problem() -> str | None:
    """Why a C extension cannot be built here (None: it can), known before mypyc's mypy run."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler, get_python_inc

    cc = new_compiler()
    customize_compiler(cc)  # CC, CFLAGS... as build_ext will use them
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.c"
        probe.write_text("#include <Python.h>\nint probe(void) { return 0; }\n")
        try:
            cc.compile([str(probe)], output_dir=tmp, include_dirs=[get_python_inc()])
        except Exception as e:
            return _first_line(e)
    return None


@functools.cache
def _hit() -> Path | None:
    """The cached build of these very inputs, when there is one (then nothing is compiled)."""
    entry = _cached_build()
    return entry if entry is not None and _cached_extensions(entry) is not None else None


@functools.cache  # build_ext is finalized more than once in a build; mypyc runs mypy once
def ext_modules() -> list[Any]:
    if os.environ.get(BUILD.PURE_ENV, "") not in ("", "0"):
        _say(f"{BUILD.PURE_ENV} set: installing pure Python")
        return []
    problem = _c_compiler_problem()
    if problem is not None:
        _say(f"no working C compiler with the Python headers ({problem}); installing pure Python")
        return []
    cached = _hit()
    if cached is not None:
        _say(f"reusing the build of these sources in {cached} ({CACHE_ENV})")
        os.utime(cached)  # recently used: the last to be pruned
        return [Extension(name, sources=[]) for name in _cached_extensions(cached) or []]
    try:
        from mypyc.build import mypycify
    except ImportError:
        _say("mypyc not found: installing pure Python")
        return []
    paths = [str(BUILD.source_path(m, Path("edgeproxy"))) for m in BUILD.COMPILED]
    # The modules compiled are type-checked (pyproject's mypy config: strict); those they import
    # are read for their types only: the build environment has no stubs for the dependencies
    # (yaml), and an error there says nothing about the code compiled.
    options = ["--follow-imports=silent"]
    try:
        return list(mypycify([*paths, *options], opt_level="3", group_name="edgeproxy"))
    except BaseException as e:  # mypyc exits on a type error; never the install with it
        _say(f"mypyc could not compile the hot path ({_first_line(e)}); installing pure Python")
        return []


# A stand-in until build_ext asks mypyc: its presence makes the wheel a platform wheel and build_ext run.
setup(ext_modules=[Extension("edgeproxy__mypyc", sources=[])], cmdclass={"build_ext": BuildOrFallBack})
