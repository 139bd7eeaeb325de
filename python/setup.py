"""segpipe's Python package: ctypes over libsegpipe.so (installed with
`make install`, or named by SEGPIPE_LIBRARY). No compiled code here, so
`pip install ./python` needs no network and no compiler."""
from setuptools import setup

setup(
    name="segpipe",
    version="0.1.0",
    description="segpipe (CT organs, passport, photo masks) from Python through libsegpipe",
    packages=["segpipe"],
    python_requires=">=3.9",
    install_requires=["numpy"],
    license="see the repository",
)
