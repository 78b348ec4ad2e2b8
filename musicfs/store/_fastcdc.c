/* musicfs.store._fastcdc: FastCDC's cut points over a whole buffer, without holding the GIL.
 *
 * A cold read is bound by the Python work each byte costs, and with it by the one core that
 * runs Python at a time: the fastcdc package's chunker holds the GIL while it scans, which
 * was nearly half of what a fill did under the GIL. The scan here is the same (the same gear
 * table, taken from that package at run time, and the same masks and bounds, computed by the
 * caller as it does), so chunks are cut exactly where they always were and a cache filled
 * before keeps deduplicating; it runs with the GIL released, beside other fills and the loop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* One chunk's length from the start of `d` (`size` bytes, more than 0): the first position past
 * `mi` where the gear hash matches the small-chunk mask before `cs`, or the large-chunk mask
 * before `ma`; else as far as `ma` (or the end). */
static uint32_t cut(const uint8_t *d, uint32_t size, const uint32_t *gear, uint32_t mi, uint32_t ma,
                    uint32_t cs, uint32_t mask_s, uint32_t mask_l)
{
    uint32_t pattern = 0;
    uint32_t i = mi < size ? mi : size;
    uint32_t barrier = cs < size ? cs : size;
    for (; i < barrier; i++) {
        pattern = (pattern >> 1) + gear[d[i]];
        if (!(pattern & mask_s))
            return i + 1;
    }
    barrier = ma < size ? ma : size;
    for (; i < barrier; i++) {
        pattern = (pattern >> 1) + gear[d[i]];
        if (!(pattern & mask_l))
            return i + 1;
    }
    return i;
}

static PyObject *cut_lengths(PyObject *self, PyObject *args)
{
    Py_buffer data, gear;
    unsigned int mi, ma, cs, mask_s, mask_l, window;
    Py_ssize_t until;
    if (!PyArg_ParseTuple(args, "y*ny*IIIIII", &data, &until, &gear, &mi, &ma, &cs, &mask_s, &mask_l,
                          &window))
        return NULL;
    PyObject *result = NULL;
    uint32_t *lengths = NULL;
    if (gear.len != 256 * sizeof(uint32_t) || window == 0 || mi == 0) {
        PyErr_SetString(PyExc_ValueError, "a gear table of 256 32-bit values and sizes above 0 are needed");
        goto done;
    }
    /* every chunk but the last is at least `mi` long: this many lengths at most */
    Py_ssize_t most = data.len / mi + 1;
    lengths = PyMem_RawMalloc(most * sizeof(uint32_t));
    if (lengths == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t count = 0;
    Py_BEGIN_ALLOW_THREADS
    const uint8_t *d = data.buf;
    Py_ssize_t offset = 0;
    while (offset < data.len && offset < until && count < most) {
        Py_ssize_t left = data.len - offset;
        uint32_t size = left < (Py_ssize_t)window ? (uint32_t)left : window;
        uint32_t length = cut(d + offset, size, gear.buf, mi, ma, cs, mask_s, mask_l);
        lengths[count++] = length;
        offset += length;
    }
    Py_END_ALLOW_THREADS
    result = PyList_New(count);
    if (result == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *length = PyLong_FromUnsignedLong(lengths[k]);
        if (length == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, k, length);
    }
done:
    PyMem_RawFree(lengths);
    PyBuffer_Release(&data);
    PyBuffer_Release(&gear);
    return result;
}

static PyMethodDef methods[] = {
    {"cut_lengths", cut_lengths, METH_VARARGS,
     "cut_lengths(data, until, gear, min, max, center, mask_s, mask_l, window) -> [length, ...]: "
     "FastCDC's lengths of the chunks of `data` that start before `until`, each cut scanning at "
     "most `window` bytes, as the fastcdc package cuts them; the GIL is released while it scans."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastcdc", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastcdc(void)
{
    return PyModule_Create(&module);
}
