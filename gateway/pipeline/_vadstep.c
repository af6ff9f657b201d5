/* The VAD's per-frame numeric step, in C: see gateway/pipeline/vadstep.py for how it is used.
 *
 * Why C: inside a busy gateway, VadSegmenter.push spent ~47 us a frame (7 in a
 * tight loop) on a ring copy, an int16-to-float cast, a BLAS product for the
 * level and the WebRTC VAD call, each a trip through Python's call machinery
 * with cold caches. Here one call does all of it; the segmenter's state machine
 * stays in Python.
 *
 * No library is linked: WebRTC's VAD is the copy the webrtcvad wheel's
 * _webrtcvad extension has already loaded. Python hands in the address of its
 * WebRtcVad_Process and the Vad object's state capsule, and this object holds a
 * reference to the capsule (its owner) for as long as it may call it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define SAMPLE_RATE 16000
#define FRAME_SAMPLES 320

/* WebRTC's int WebRtcVad_Process(VadInst *, int fs, const int16_t *frame, size_t length). */
typedef int (*vad_process_call)(void *handle, int fs, const int16_t *frame, size_t length);

enum { LEVEL_NONE = 0, LEVEL_POWER = 1, LEVEL_VARIANCE = 2 };

typedef struct {
    PyObject_HEAD
    Py_buffer ring; /* held for the object's life: numpy will not resize the array */
    int has_ring;
    Py_ssize_t rows;
    PyObject *capsule; /* the Vad's state: kept alive while we may call into it */
    void *handle;
    vad_process_call process;
    int level;
} VadStep;

static int VadStep_init(VadStep *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"ring", "process", "vad", "level", NULL};
    PyObject *ring, *process, *capsule;
    int level;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOi", keywords, &ring, &process, &capsule,
                                     &level))
        return -1;
    if (self->has_ring) {
        PyErr_SetString(PyExc_RuntimeError, "VadStep is initialised once");
        return -1;
    }
    if (level < LEVEL_NONE || level > LEVEL_VARIANCE) {
        PyErr_Format(PyExc_ValueError, "level must be 0, 1 or 2, not %d", level);
        return -1;
    }
    void *function = PyLong_AsVoidPtr(process);
    if (function == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "process is a NULL pointer");
        return -1;
    }
    void *handle = PyCapsule_GetPointer(capsule, "WebRtcVadPtr");
    if (handle == NULL)
        return -1;
    if (PyObject_GetBuffer(ring, &self->ring, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) <
        0)
        return -1;
    if (self->ring.ndim != 2 || self->ring.shape[1] != FRAME_SAMPLES ||
        self->ring.itemsize != 2 || strcmp(self->ring.format, "h") != 0 ||
        self->ring.shape[0] < 1) {
        PyBuffer_Release(&self->ring);
        PyErr_Format(PyExc_ValueError, "the ring must be int16 rows of %d samples",
                     FRAME_SAMPLES);
        return -1;
    }
    self->has_ring = 1;
    self->rows = self->ring.shape[0];
    Py_INCREF(capsule);
    self->capsule = capsule;
    self->handle = handle;
    self->process = (vad_process_call)function;
    self->level = level;
    return 0;
}

static int VadStep_traverse(VadStep *self, visitproc visit, void *arg) {
    Py_VISIT(self->capsule);
    if (self->has_ring)
        Py_VISIT(self->ring.obj);
    return 0;
}

static int VadStep_clear(VadStep *self) {
    /* The capsule goes with the ring: a cleared object is never called again. */
    if (self->has_ring) {
        self->has_ring = 0;
        PyBuffer_Release(&self->ring);
    }
    self->handle = NULL;
    Py_CLEAR(self->capsule);
    return 0;
}

static void VadStep_dealloc(VadStep *self) {
    PyObject_GC_UnTrack(self);
    VadStep_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Copy one int16 frame, any stride, into a ring row; -1 with ValueError if it is not one. */
static int copy_frame(PyObject *frame, int16_t *row) {
    Py_buffer view;
    if (PyObject_GetBuffer(frame, &view, PyBUF_RECORDS_RO) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "a frame must be %d int16 samples, got %.100s",
                     FRAME_SAMPLES, Py_TYPE(frame)->tp_name);
        return -1;
    }
    int ok = view.ndim == 1 && view.shape[0] == FRAME_SAMPLES && view.itemsize == 2 &&
             view.format != NULL && strcmp(view.format, "h") == 0;
    if (!ok) {
        PyErr_Format(PyExc_ValueError, "a frame must be %d int16 samples, got %zd of format %.20s",
                     FRAME_SAMPLES, view.ndim == 1 ? view.shape[0] : view.len / view.itemsize,
                     view.format != NULL ? view.format : "B");
        PyBuffer_Release(&view);
        return -1;
    }
    if (view.strides[0] == 2) {
        memcpy(row, view.buf, FRAME_SAMPLES * 2);
    } else {
        const char *p = (const char *)view.buf;
        for (int i = 0; i < FRAME_SAMPLES; i++, p += view.strides[0])
            memcpy(&row[i], p, 2);
    }
    PyBuffer_Release(&view);
    return 0;
}

/* step(frame, slot) -> (voiced, level_db): the frame into ring row ``slot``, WebRTC's VAD
 * on that row, and the frame's level in dB (10 log10(mean square or variance + 1)). */
static PyObject *VadStep_step(VadStep *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "step(frame, slot) takes two arguments");
        return NULL;
    }
    if (!self->has_ring || self->handle == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "VadStep is not initialised");
        return NULL;
    }
    Py_ssize_t slot = PyLong_AsSsize_t(args[1]);
    if (slot == -1 && PyErr_Occurred())
        return NULL;
    if (slot < 0 || slot >= self->rows) {
        PyErr_Format(PyExc_ValueError, "slot %zd is outside the ring's %zd rows", slot, self->rows);
        return NULL;
    }
    int16_t *row = (int16_t *)self->ring.buf + slot * FRAME_SAMPLES;
    if (copy_frame(args[0], row) < 0)
        return NULL;
    int voiced = self->process(self->handle, SAMPLE_RATE, row, FRAME_SAMPLES);
    if (voiced < 0) {
        PyErr_SetString(PyExc_RuntimeError, "WebRTC's VAD could not process the frame");
        return NULL;
    }
    double db = 0.0;
    if (self->level != LEVEL_NONE) {
        /* Exact in integers: 320 * 2^30 fits an int64 with room to spare. */
        int64_t squares = 0, total = 0;
        for (int i = 0; i < FRAME_SAMPLES; i++) {
            int32_t s = row[i];
            squares += s * s;
            total += s;
        }
        double power = (double)squares;
        if (self->level == LEVEL_VARIANCE)
            power -= (double)total * (double)total / FRAME_SAMPLES;
        db = 10.0 * log10(power / FRAME_SAMPLES + 1.0);
    }
    PyObject *level = PyFloat_FromDouble(db);
    if (level == NULL)
        return NULL;
    PyObject *result = PyTuple_New(2);
    if (result == NULL) {
        Py_DECREF(level);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, Py_NewRef(voiced ? Py_True : Py_False));
    PyTuple_SET_ITEM(result, 1, level);
    return result;
}

static PyMethodDef VadStep_methods[] = {
    {"step", (PyCFunction)(void (*)(void))VadStep_step, METH_FASTCALL,
     "step(frame, slot) -> (voiced, level_db)."},
    {NULL},
};

static PyTypeObject VadStepType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway.pipeline._vadstep.VadStep",
    .tp_basicsize = sizeof(VadStep),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A segmenter's ring, its WebRTC VAD and the level: one call per frame.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)VadStep_init,
    .tp_traverse = (traverseproc)VadStep_traverse,
    .tp_clear = (inquiry)VadStep_clear,
    .tp_dealloc = (destructor)VadStep_dealloc,
    .tp_methods = VadStep_methods,
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "gateway.pipeline._vadstep",
    "The VAD's per-frame step in C (see gateway/pipeline/vadstep.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__vadstep(void) {
    if (PyType_Ready(&VadStepType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddIntConstant(module, "FRAME_SAMPLES", FRAME_SAMPLES) < 0 ||
        PyModule_AddIntConstant(module, "LEVEL_NONE", LEVEL_NONE) < 0 ||
        PyModule_AddIntConstant(module, "LEVEL_POWER", LEVEL_POWER) < 0 ||
        PyModule_AddIntConstant(module, "LEVEL_VARIANCE", LEVEL_VARIANCE) < 0 ||
        PyModule_AddObjectRef(module, "VadStep", (PyObject *)&VadStepType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
