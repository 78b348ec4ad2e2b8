"""The compiled parts of musicfs (everything else is in pyproject.toml). Both are optional:
where one cannot be built, musicfs works as before without it.

``musicfs.fuse._replyopen`` lets the kernel keep directory listings (see its C source);
without it each listing is asked of the daemon. ``musicfs.store._fastcdc`` finds chunk
boundaries with the GIL released (see its C source); without it the fastcdc package's own
scan finds the same ones holding the GIL.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("musicfs.fuse._replyopen", ["musicfs/fuse/_replyopen.c"],
                             libraries=["dl"], optional=True),
                   Extension("musicfs.store._fastcdc", ["musicfs/store/_fastcdc.c"], optional=True)])
