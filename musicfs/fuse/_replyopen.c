/* musicfs.fuse._replyopen: lets an opendir reply ask the kernel to keep the listing.
 *
 * The kernel keeps a directory's entries in its page cache (FOPEN_CACHE_DIR) and answers
 * later listings itself only when the reply to opendir asks for it, and pyfuse3's opendir
 * handler can return a handle and nothing else. Loaded into the process's global symbol
 * scope before pyfuse3 (see musicfs/fuse/dircache.py), this module's fuse_reply_open is the
 * one pyfuse3 and libfuse call: a reply whose handle carries CACHE_DIR_BIT goes to libfuse's
 * own fuse_reply_open without the bit and with cache_readdir and keep_cache set (keep_cache:
 * an opendir without it drops what the kernel kept). Every other reply passes through as it is.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#define FUSE_USE_VERSION 31
#include <Python.h>
#include <dlfcn.h>
#include <fuse3/fuse_lowlevel.h>
#include <stdio.h>
#include <stdlib.h>

#define CACHE_DIR_BIT (1ULL << 63)

typedef int (*reply_open_fn)(fuse_req_t, const struct fuse_file_info *);

static reply_open_fn libfuse_reply_open(void)
{
    static reply_open_fn real;
    if (real == NULL) {
        /* libfuse is loaded by then (pyfuse3 needs it): look it up in libfuse itself, by the
         * version pyfuse3 was linked against */
        void *libfuse = dlopen("libfuse3.so.3", RTLD_NOW | RTLD_NOLOAD);
        if (libfuse != NULL)
            real = (reply_open_fn)dlvsym(libfuse, "fuse_reply_open", "FUSE_3.0");
        if (real == NULL) {
            /* no reply could be sent at all: the request would hang the caller for good */
            fprintf(stderr, "musicfs: libfuse's fuse_reply_open cannot be found: %s\n", dlerror());
            abort();
        }
    }
    return real;
}

int fuse_reply_open(fuse_req_t req, const struct fuse_file_info *fi)
{
    if (fi->fh & CACHE_DIR_BIT) {
        struct fuse_file_info keep = *fi;
        keep.fh &= ~CACHE_DIR_BIT;
        keep.cache_readdir = 1;
        keep.keep_cache = 1;
        return libfuse_reply_open()(req, &keep);
    }
    return libfuse_reply_open()(req, fi);
}

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_replyopen",
    "fuse_reply_open that honours CACHE_DIR_BIT in a directory handle (see the C source)", -1, NULL,
};

PyMODINIT_FUNC PyInit__replyopen(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddObject(m, "CACHE_DIR_BIT", PyLong_FromUnsignedLongLong(CACHE_DIR_BIT)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
