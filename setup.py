"""Build step for the one compiled part: the preprocessing kernels (vlmedge/preprocess/_kernels.c).

Everything else is configured in pyproject.toml. The kernel is plain C loaded with ctypes (no
Python headers needed); when no C compiler is available the build goes on without it and
preprocessing uses the bit-identical numpy path (``vlmedge.preprocess.kernels_backend()``
says which).
"""

import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3", "-fvisibility=hidden"]
setup(ext_modules=[Extension("vlmedge.preprocess._kernels", sources=["vlmedge/preprocess/_kernels.c"],
                             extra_compile_args=flags, optional=True)])
