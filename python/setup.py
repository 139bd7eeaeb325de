"""segpipe's Python package: ctypes over libsegpipe.so. No compiled code
here, so `pip install ./python` needs no network and no compiler.

Where the package finds libsegpipe is decided here, once, at install time,
and written into segpipe/_where.py (docs/python.md): the library of
SEGPIPE_PREFIX (the PREFIX given to `make install`), else the one
pkg-config knows (`make install` writes segpipe.pc), else the checkout's
build/ when this setup.py is run from a checkout that has been built. At
import time no variable is needed; the system loader and SEGPIPE_LIBRARY
remain as fallbacks and overrides (segpipe/_lib.py)."""
import os
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _pkg_config_libdir():
    try:
        p = subprocess.run(["pkg-config", "--variable=libdir", "segpipe"], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 and p.stdout.strip() else None


def find_library():
    """The libsegpipe this installation will load, or None (then the system
    loader decides at import time)."""
    prefix = os.environ.get("SEGPIPE_PREFIX")
    dirs = [os.path.join(prefix, "lib")] if prefix else []
    libdir = _pkg_config_libdir()
    if libdir:
        dirs.append(libdir)
    for d in dirs:
        for name in ("libsegpipe.so.0", "libsegpipe.so"):
            if os.path.isfile(os.path.join(d, name)):
                return os.path.abspath(os.path.join(d, name))
    if prefix:
        raise SystemExit(f"segpipe: SEGPIPE_PREFIX={prefix} has no lib/libsegpipe.so.0 (run `make install "
                         f"PREFIX={prefix}` first)")
    build = os.path.join(HERE, "..", "build", "libsegpipe.so")
    return os.path.abspath(build) if os.path.isfile(build) else None


class BuildPy(build_py):
    """Writes segpipe/_where.py (the library found above) into the build."""

    def run(self):
        super().run()
        lib = find_library()
        target = os.path.join(self.build_lib, "segpipe", "_where.py")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            f.write('"""Written by setup.py at install time: the libsegpipe this installation loads."""\n')
            f.write(f"LIBRARY = {lib!r}\n")


setup(
    name="segpipe",
    version="0.1.0",
    description="segpipe (CT organs, passport, photo masks) from Python through libsegpipe",
    packages=["segpipe"],
    python_requires=">=3.9",
    install_requires=["numpy"],
    extras_require={"nibabel": ["nibabel"]},
    cmdclass={"build_py": BuildPy},
    license="see the repository",
)
