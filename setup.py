"""The one compiled part of musicfs (everything else is in pyproject.toml).

``musicfs.fuse._replyopen`` lets the kernel keep directory listings (see its C source). It
is optional: where it cannot be built, listings work as before, each one asked of the daemon.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("musicfs.fuse._replyopen", ["musicfs/fuse/_replyopen.c"],
                             libraries=["dl"], optional=True)])
