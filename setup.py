"""Compiles edgeproxy's hot path with mypyc where it can; everything else is in pyproject.toml.

The modules of ``edgeproxy.build.COMPILED`` become C extensions installed next to their ``.py``
sources, plus ``edgeproxy/compiled.stamp`` (what compiled them, the sources' digest) that
edgeproxy/build.py reads at run time. The install never fails for want of a compiler: with
``EDGEPROXY_PURE_PYTHON=1`` set, without mypyc, or when compiling fails (no gcc, no Python
headers, CC=/bin/false), it says why on stderr and installs the pure-Python package.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
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


class BuildOrFallBack(build_ext):
    """build_ext that installs pure Python instead of failing, and stamps a complete build.

    mypyc (a whole mypy run) is asked for the extensions only here, when they are built: pip runs
    setup.py three times (requirements, metadata, wheel) and only the last one builds.
    """

    def finalize_options(self) -> None:
        self.distribution.ext_modules = ext_modules()
        super().finalize_options()

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


@functools.cache  # build_ext is finalized more than once in a build; mypyc runs mypy once
def ext_modules() -> list[Any]:
    if os.environ.get(BUILD.PURE_ENV, "") not in ("", "0"):
        _say(f"{BUILD.PURE_ENV} set: installing pure Python")
        return []
    problem = _c_compiler_problem()
    if problem is not None:
        _say(f"no working C compiler with the Python headers ({problem}); installing pure Python")
        return []
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
