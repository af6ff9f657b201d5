/* The VAD's per-frame numeric step, in C: see gateway/pipeline/vad/ (core.py, compiled.py)
 * for how it is used.
 *
 * Why C: inside a busy gateway, VadSegmenter.push spent ~47 us a frame (7 in a
 * tight loop) on a ring copy, an int16-to-float cast, a BLAS product for the
 * level and the WebRTC VAD call, each a trip through Python's call machinery
 * with cold caches. Here one call does all of it.
 *
 * The segmenter's steady state is here too (push, advance, gate: the frame-by-frame
 * part of its state machine, vad/fallback.py's PythonCore line for line, in doubles
 * as Python's floats are): per frame Python then runs only when something changes, a
 * turn opening or closing, or while the stream's first frames are held to learn the
 * room. The state lives in this object's attributes, which vad/segmenter.py reads and
 * writes for the rest.
 *
 * No library is linked: WebRTC's VAD is the copy the webrtcvad wheel's
 * _webrtcvad extension has already loaded. Python hands in the address of its
 * WebRtcVad_Process and the Vad object's state capsule, and this object holds a
 * reference to the capsule (its owner) for as long as it may call it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

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
    /* The state machine (VadSegmenter's, see vad/segmenter.py), once configure() was called. */
    int configured;
    char gated, voice, prev_loud, learning, last_voiced_flag;
    int start_voiced;
    uint64_t window_mask, window, loud;
    long long index, start_frame, last_voiced, filled, hangover, max_frames;
    double floor, room, voice_margin, floor_margin, db;
    Py_buffer buf; /* the utterance buffer: int16, C-contiguous, writable */
    int has_buf;
    PyObject *grow; /* grow(end): make room for ``end`` samples, then set_buffer() */
} VadStep;

/* What push() and advance() tell the segmenter (vad/core.py has the same names). */
enum { NOTHING = 0, OPEN = 1, CLOSE = 2, CLOSE_FORCED = 3, LEARN = 4 };

/* vad/fallback.py's constants of the gate (ROOM_SPREAD_DB: vad/core.py's), the same doubles. */
#define FLOOR_DOWN 0.1
#define FLOOR_UP 0.05
#define ROOM_RISE 0.5
#define ROOM_RISE_IN_TURN 0.05
#define ROOM_DECAY_DB 0.1
#define ROOM_HEADROOM_DB 10.0
#define ROOM_SPREAD_DB 20.0
#define START_LOUD 3
#define TAIL_DB 2.0

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
    /* Not the exporters of the ring and the utterance buffer: visiting them lets the
     * collector clear a ring memoryview in a cycle with this step while its export is
     * held here, and memoryview's tp_clear then drops its managed buffer anyway: the
     * release at this step's clear reads freed memory (a crash at exit). Held exports
     * count as outside references instead, so the view outlives this step; neither a
     * memoryview nor an array refers back to anything, so no cycle is missed. */
    Py_VISIT(self->capsule);
    Py_VISIT(self->grow);
    return 0;
}

static int VadStep_clear(VadStep *self) {
    /* The capsule goes with the ring: a cleared object is never called again. */
    if (self->has_ring) {
        self->has_ring = 0;
        PyBuffer_Release(&self->ring);
    }
    if (self->has_buf) {
        self->has_buf = 0;
        PyBuffer_Release(&self->buf);
    }
    self->handle = NULL;
    self->configured = 0;
    Py_CLEAR(self->capsule);
    Py_CLEAR(self->grow);
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

/* The frame into ring row ``slot``, WebRTC's VAD on that row, and the frame's level in
 * dB (10 log10(mean square or variance + 1)); -1 with an exception set. */
static int run_step(VadStep *self, PyObject *frame, Py_ssize_t slot, int *voiced, double *db) {
    if (!self->has_ring || self->handle == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "VadStep is not initialised");
        return -1;
    }
    if (slot < 0 || slot >= self->rows) {
        PyErr_Format(PyExc_ValueError, "slot %zd is outside the ring's %zd rows", slot, self->rows);
        return -1;
    }
    int16_t *row = (int16_t *)self->ring.buf + slot * FRAME_SAMPLES;
    if (copy_frame(frame, row) < 0)
        return -1;
    int verdict = self->process(self->handle, SAMPLE_RATE, row, FRAME_SAMPLES);
    if (verdict < 0) {
        PyErr_SetString(PyExc_RuntimeError, "WebRTC's VAD could not process the frame");
        return -1;
    }
    *voiced = verdict != 0;
    *db = 0.0;
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
        *db = 10.0 * log10(power / FRAME_SAMPLES + 1.0);
    }
    return 0;
}

/* step(frame, slot) -> (voiced, level_db). */
static PyObject *VadStep_step(VadStep *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "step(frame, slot) takes two arguments");
        return NULL;
    }
    Py_ssize_t slot = PyLong_AsSsize_t(args[1]);
    if (slot == -1 && PyErr_Occurred())
        return NULL;
    int voiced;
    double db;
    if (run_step(self, args[0], slot, &voiced, &db) < 0)
        return NULL;
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

/* --- the segmenter's steady state (vad/fallback.py: PythonCore.advance and gate) ------ */

static int popcount(uint64_t bits) { return __builtin_popcountll(bits); }

/* Python's min(a, b) and max(a, b): the first unless the second is strictly beyond it. */
static double py_min(double a, double b) { return b < a ? b : a; }
static double py_max(double a, double b) { return b > a ? b : a; }

/* VadSegmenter._gate: whether a frame WebRTC's VAD called ``voiced`` is loud enough. */
static int gate(VadStep *self, double db, int voiced) {
    double floor = self->floor;
    if (floor < 0) { /* the first frame: the room as it is */
        self->floor = db;
        self->room = db + ROOM_HEADROOM_DB;
        return 0;
    }
    int in_turn = self->start_frame >= 0;
    double dev = db - floor, new_floor;
    if (dev < 0)
        self->floor = new_floor = floor + dev * FLOOR_DOWN;
    else if (!in_turn)
        self->floor = new_floor = floor + dev * FLOOR_UP;
    else
        new_floor = floor;
    if (!self->voice)
        return voiced && (!in_turn || db >= floor + self->floor_margin);

    double room = py_min(self->room, new_floor + ROOM_SPREAD_DB);
    int loud = voiced && db >= room + self->voice_margin;
    if (!loud && in_turn && self->prev_loud) {
        loud = voiced && db >= py_min(room + TAIL_DB, new_floor + self->floor_margin);
        self->prev_loud = (char)loud;
        return loud;
    }
    self->prev_loud = (char)loud;
    if (!loud) {
        if (db > room)
            room += (db - room) * (voiced && !in_turn ? ROOM_RISE : ROOM_RISE_IN_TURN);
        else
            room = py_max(db, room - ROOM_DECAY_DB);
    }
    self->room = room;
    return loud;
}

/* The open turn's buffer takes ring row ``index``; the buffer grows through Python. */
static int append_row(VadStep *self, long long index) {
    long long end = self->filled + FRAME_SAMPLES;
    if (!self->has_buf || end > self->buf.len / 2) {
        PyObject *result = PyObject_CallFunction(self->grow, "L", end);
        if (result == NULL)
            return -1;
        Py_DECREF(result);
        if (!self->has_buf || end > self->buf.len / 2) {
            PyErr_SetString(PyExc_RuntimeError, "grow() left no room in the utterance buffer");
            return -1;
        }
    }
    const int16_t *row = (const int16_t *)self->ring.buf + (index % self->rows) * FRAME_SAMPLES;
    memcpy((int16_t *)self->buf.buf + self->filled, row, FRAME_SAMPLES * 2);
    self->filled = end;
    return 0;
}

/* VadSegmenter._step after the step: the state machine for frame ``index`` (in its ring
 * row); what Python must do about it, or -1 with an exception set. */
static int advance(VadStep *self, long long index, int voiced, double db) {
    if (self->gated) {
        int gated = gate(self, db, voiced);
        if (self->voice && self->start_frame < 0) {
            /* WebRTC's window as always, and enough of it clearly above the room. */
            self->loud = ((self->loud << 1) | (uint64_t)gated) & self->window_mask;
            if (popcount(self->loud) < START_LOUD) {
                self->window = ((self->window << 1) | (uint64_t)voiced) & self->window_mask;
                return NOTHING;
            }
        } else {
            voiced = gated;
        }
    }
    if (self->start_frame < 0) {
        self->window = ((self->window << 1) | (uint64_t)voiced) & self->window_mask;
        return popcount(self->window) < self->start_voiced ? NOTHING : OPEN;
    }
    if (append_row(self, index) < 0)
        return -1;
    if (voiced)
        self->last_voiced = index;
    if (index - self->last_voiced >= self->hangover)
        return CLOSE;
    if (index + 1 - self->start_frame >= self->max_frames)
        return CLOSE_FORCED;
    return NOTHING;
}

static int check_configured(VadStep *self) {
    if (!self->configured || !self->has_ring || self->handle == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "VadStep is not configured");
        return -1;
    }
    return 0;
}

/* push(frame) -> code: the step into the next ring row, then (unless learning) advance. */
static PyObject *VadStep_push(VadStep *self, PyObject *frame) {
    if (check_configured(self) < 0)
        return NULL;
    long long index = self->index;
    int voiced;
    double db;
    if (run_step(self, frame, (Py_ssize_t)(index % self->rows), &voiced, &db) < 0)
        return NULL;
    self->index = index + 1;
    self->last_voiced_flag = (char)voiced;
    self->db = db;
    if (self->learning)
        return PyLong_FromLong(LEARN);
    int code = advance(self, index, voiced, db);
    return code < 0 ? NULL : PyLong_FromLong(code);
}

/* advance(index, voiced, db) -> code: the state machine for a frame already in its row. */
static PyObject *VadStep_advance(VadStep *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "advance(index, voiced, db) takes three arguments");
        return NULL;
    }
    long long index = PyLong_AsLongLong(args[0]);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    int voiced = PyObject_IsTrue(args[1]);
    if (voiced < 0)
        return NULL;
    double db = PyFloat_AsDouble(args[2]);
    if (db == -1.0 && PyErr_Occurred())
        return NULL;
    if (check_configured(self) < 0)
        return NULL;
    if (index < 0) {
        PyErr_Format(PyExc_ValueError, "frame index %lld is negative", index);
        return NULL;
    }
    int code = advance(self, index, voiced, db);
    return code < 0 ? NULL : PyLong_FromLong(code);
}

/* gate(db, voiced) -> bool: VadSegmenter._gate, for the frames held while learning. */
static PyObject *VadStep_gate(VadStep *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "gate(db, voiced) takes two arguments");
        return NULL;
    }
    double db = PyFloat_AsDouble(args[0]);
    if (db == -1.0 && PyErr_Occurred())
        return NULL;
    int voiced = PyObject_IsTrue(args[1]);
    if (voiced < 0)
        return NULL;
    if (check_configured(self) < 0)
        return NULL;
    return PyBool_FromLong(gate(self, db, voiced));
}

/* set_buffer(buffer): the open turn's samples go here from now on (int16, writable). */
static PyObject *VadStep_set_buffer(VadStep *self, PyObject *buffer) {
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) <
        0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "the utterance buffer must be writable int16 samples, "
                                       "got %.100s", Py_TYPE(buffer)->tp_name);
        return NULL;
    }
    if (view.itemsize != 2 || view.format == NULL || strcmp(view.format, "h") != 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "the utterance buffer must be int16 samples");
        return NULL;
    }
    if (self->has_buf)
        PyBuffer_Release(&self->buf);
    self->buf = view;
    self->has_buf = 1;
    Py_RETURN_NONE;
}

/* configure(window_frames, start_voiced, hangover, max_frames, gated, voice, voice_margin,
 *           floor_margin, learning, grow): the segmenter's settings; its state from zero. */
static PyObject *VadStep_configure(VadStep *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"window_frames", "start_voiced", "hangover", "max_frames",
                               "gated", "voice", "voice_margin", "floor_margin",
                               "learning", "grow", NULL};
    int window_frames, start_voiced, gated, voice, learning;
    long long hangover, max_frames;
    double voice_margin, floor_margin;
    PyObject *grow;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iiLLppddpO:configure", keywords,
                                     &window_frames, &start_voiced, &hangover, &max_frames,
                                     &gated, &voice, &voice_margin, &floor_margin, &learning,
                                     &grow))
        return NULL;
    if (window_frames < 1 || window_frames > 64 || start_voiced < 1 ||
        start_voiced > window_frames) {
        PyErr_Format(PyExc_ValueError,
                     "need 1 <= start_voiced <= window_frames <= 64, got %d of %d",
                     start_voiced, window_frames);
        return NULL;
    }
    if (hangover < 1 || max_frames < 1) {
        PyErr_SetString(PyExc_ValueError, "hangover and max_frames must be at least 1 frame");
        return NULL;
    }
    if (!PyCallable_Check(grow)) {
        PyErr_SetString(PyExc_TypeError, "grow must be callable");
        return NULL;
    }
    self->window_mask = window_frames == 64 ? ~(uint64_t)0 : ((uint64_t)1 << window_frames) - 1;
    self->start_voiced = start_voiced;
    self->hangover = hangover;
    self->max_frames = max_frames;
    self->gated = (char)gated;
    self->voice = (char)voice;
    self->voice_margin = voice_margin;
    self->floor_margin = floor_margin;
    self->learning = (char)learning;
    Py_XSETREF(self->grow, Py_NewRef(grow));
    self->index = self->filled = self->last_voiced = 0;
    self->start_frame = -1;
    self->window = self->loud = 0;
    self->floor = self->room = -1.0;
    self->prev_loud = self->last_voiced_flag = 0;
    self->db = 0.0;
    self->configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef VadStep_methods[] = {
    {"step", (PyCFunction)(void (*)(void))VadStep_step, METH_FASTCALL,
     "step(frame, slot) -> (voiced, level_db)."},
    {"push", (PyCFunction)VadStep_push, METH_O,
     "push(frame) -> code: the step into the next ring row and the state machine."},
    {"advance", (PyCFunction)(void (*)(void))VadStep_advance, METH_FASTCALL,
     "advance(index, voiced, db) -> code: the state machine for a frame in its ring row."},
    {"gate", (PyCFunction)(void (*)(void))VadStep_gate, METH_FASTCALL,
     "gate(db, voiced) -> bool: whether a voiced frame is loud enough to be the caller."},
    {"set_buffer", (PyCFunction)VadStep_set_buffer, METH_O,
     "set_buffer(buffer): where the open turn's samples go (int16, writable)."},
    {"configure", (PyCFunction)(void (*)(void))VadStep_configure, METH_VARARGS | METH_KEYWORDS,
     "configure(...): the segmenter's settings; its state from the start."},
    {NULL},
};

/* The state, shared with vad/segmenter.py (which runs the rest of the state machine). */
static PyMemberDef VadStep_members[] = {
    {"index", T_LONGLONG, offsetof(VadStep, index), 0, "frames pushed"},
    {"window", T_ULONGLONG, offsetof(VadStep, window), 0, "WebRTC's start window, bit 0 last"},
    {"loud", T_ULONGLONG, offsetof(VadStep, loud), 0, "the voice gate's start window"},
    {"start_frame", T_LONGLONG, offsetof(VadStep, start_frame), 0, "-1 when idle"},
    {"last_voiced", T_LONGLONG, offsetof(VadStep, last_voiced), 0, "of the open turn"},
    {"filled", T_LONGLONG, offsetof(VadStep, filled), 0, "samples in the utterance buffer"},
    {"floor", T_DOUBLE, offsetof(VadStep, floor), 0, "the room's quiet level, dB"},
    {"room", T_DOUBLE, offsetof(VadStep, room), 0, "the voice gate's room level, dB"},
    {"prev_loud", T_BOOL, offsetof(VadStep, prev_loud), 0, "the previous frame was loud"},
    {"learning", T_BOOL, offsetof(VadStep, learning), 0, "push() leaves frames to Python"},
    {"voiced", T_BOOL, offsetof(VadStep, last_voiced_flag), READONLY, "last push's verdict"},
    {"db", T_DOUBLE, offsetof(VadStep, db), READONLY, "last push's level"},
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
    .tp_members = VadStep_members,
};

/* A bot session's frame listener (gateway/pipeline/session.py, FrameListener there): what
 * the compiled inbound path (gateway/media/csrc/inbound.c) calls with every decoded frame of a call.
 *
 * Why: with only the session listening, a frame went C decoder -> the session's Python
 * _on_frame -> C VadStep.push, and most frames come back with nothing to do. Here the
 * step is called from C, and Python runs only for a frame with an action (a turn opening
 * or closing, learning the room), or for every frame while the session says it must
 * look at each (``plain`` false: not listening, pauses, a prompt held for a sound). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall; /* called as the media path calls it: no argument tuple */
    VadStep *core;             /* the segmenter's core (a new one after its reset) */
    PyObject *on_step;  /* on_step(action, frame): a frame with an action */
    PyObject *on_frame; /* on_frame(frame): every frame, while not plain */
    char plain;
} FrameListener;

static PyTypeObject FrameListenerType;
static PyObject *FrameListener_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                          PyObject *kwnames);

static int FrameListener_init(FrameListener *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"core", "on_step", "on_frame", NULL};
    PyObject *core, *on_step, *on_frame;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OO", keywords, &VadStepType, &core,
                                     &on_step, &on_frame))
        return -1;
    if (!PyCallable_Check(on_step) || !PyCallable_Check(on_frame)) {
        PyErr_SetString(PyExc_TypeError, "on_step and on_frame must be callable");
        return -1;
    }
    Py_XSETREF(self->core, (VadStep *)Py_NewRef(core));
    Py_XSETREF(self->on_step, Py_NewRef(on_step));
    Py_XSETREF(self->on_frame, Py_NewRef(on_frame));
    self->vectorcall = FrameListener_vectorcall;
    return 0;
}

static int FrameListener_traverse(FrameListener *self, visitproc visit, void *arg) {
    Py_VISIT(self->core);
    Py_VISIT(self->on_step);
    Py_VISIT(self->on_frame);
    return 0;
}

static int FrameListener_clear(FrameListener *self) {
    Py_CLEAR(self->core);
    Py_CLEAR(self->on_step);
    Py_CLEAR(self->on_frame);
    return 0;
}

static void FrameListener_dealloc(FrameListener *self) {
    PyObject_GC_UnTrack(self);
    FrameListener_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* on_frame(frame), returning None. */
static PyObject *frame_to_python(FrameListener *self, PyObject *frame) {
    PyObject *on_frame = Py_NewRef(self->on_frame);
    PyObject *out = PyObject_CallOneArg(on_frame, frame);
    Py_DECREF(on_frame);
    if (out == NULL)
        return NULL;
    Py_DECREF(out);
    Py_RETURN_NONE;
}

/* listener(frame): VadStep.push's body, then Python only if the action asks for it. */
static PyObject *FrameListener_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                          PyObject *kwnames) {
    FrameListener *self = (FrameListener *)callable;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "a FrameListener takes one frame");
        return NULL;
    }
    if (self->core == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "FrameListener is not initialised");
        return NULL;
    }
    PyObject *frame = args[0];
    if (!self->plain)
        return frame_to_python(self, frame);
    /* Our own references: the callbacks may replace them (a reset, a new core). */
    VadStep *core = (VadStep *)Py_NewRef(self->core);
    PyObject *result = VadStep_push(core, frame);
    Py_DECREF(core);
    if (result == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError))
            return NULL;
        /* Not a frame (nothing was pushed): on_frame says so as the session does. */
        PyErr_Clear();
        return frame_to_python(self, frame);
    }
    if (PyLong_AsLong(result) == NOTHING) { /* the steady state: nothing for Python */
        Py_DECREF(result);
        Py_RETURN_NONE;
    }
    PyObject *on_step = Py_NewRef(self->on_step);
    PyObject *step_args[2] = {result, frame};
    PyObject *out = PyObject_Vectorcall(on_step, step_args, 2, NULL);
    Py_DECREF(on_step);
    Py_DECREF(result);
    if (out == NULL)
        return NULL;
    Py_DECREF(out);
    Py_RETURN_NONE;
}

static int FrameListener_set_core(FrameListener *self, PyObject *core, void *closure) {
    (void)closure;
    if (core == NULL || !PyObject_TypeCheck(core, &VadStepType)) {
        PyErr_SetString(PyExc_TypeError, "core must be a VadStep");
        return -1;
    }
    Py_XSETREF(self->core, (VadStep *)Py_NewRef(core));
    return 0;
}

static PyObject *FrameListener_get_core(FrameListener *self, void *closure) {
    (void)closure;
    if (self->core == NULL)
        Py_RETURN_NONE;
    return Py_NewRef(self->core);
}

/* Equal to (and hashed as) the Python listener it stands for, on_frame: a call's listeners
 * are found and removed by the session's _on_frame whichever of the two it registered. */
static PyObject *FrameListener_richcompare(FrameListener *self, PyObject *other, int op) {
    if ((op != Py_EQ && op != Py_NE) || self->on_frame == NULL)
        Py_RETURN_NOTIMPLEMENTED;
    if (PyObject_TypeCheck(other, &FrameListenerType))
        other = ((FrameListener *)other)->on_frame;
    if (other == NULL)
        Py_RETURN_NOTIMPLEMENTED;
    return PyObject_RichCompare(self->on_frame, other, op);
}

static Py_hash_t FrameListener_hash(FrameListener *self) {
    if (self->on_frame == NULL)
        return _Py_HashPointer(self);
    return PyObject_Hash(self->on_frame);
}

static PyGetSetDef FrameListener_getset[] = {
    {"core", (getter)FrameListener_get_core, (setter)FrameListener_set_core,
     "the VadStep called with each frame while plain", NULL},
    {NULL},
};

static PyMemberDef FrameListener_members[] = {
    {"plain", T_BOOL, offsetof(FrameListener, plain), 0,
     "true: the step in C, on_step(action, frame) only at an action; false: on_frame(frame)"},
    {NULL},
};

static PyTypeObject FrameListenerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway.pipeline._vadstep.FrameListener",
    .tp_basicsize = sizeof(FrameListener),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(FrameListener, vectorcall),
    .tp_doc = "A bot session's frame listener: the VAD step in C, Python only at its actions.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FrameListener_init,
    .tp_traverse = (traverseproc)FrameListener_traverse,
    .tp_clear = (inquiry)FrameListener_clear,
    .tp_dealloc = (destructor)FrameListener_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_richcompare = (richcmpfunc)FrameListener_richcompare,
    .tp_hash = (hashfunc)FrameListener_hash,
    .tp_getset = FrameListener_getset,
    .tp_members = FrameListener_members,
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "gateway.pipeline._vadstep",
    "The VAD's per-frame step in C (see gateway/pipeline/vad/compiled.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__vadstep(void) {
    if (PyType_Ready(&VadStepType) < 0 || PyType_Ready(&FrameListenerType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddIntConstant(module, "FRAME_SAMPLES", FRAME_SAMPLES) < 0 ||
        PyModule_AddIntConstant(module, "LEVEL_NONE", LEVEL_NONE) < 0 ||
        PyModule_AddIntConstant(module, "LEVEL_POWER", LEVEL_POWER) < 0 ||
        PyModule_AddIntConstant(module, "LEVEL_VARIANCE", LEVEL_VARIANCE) < 0 ||
        PyModule_AddIntConstant(module, "NOTHING", NOTHING) < 0 ||
        PyModule_AddIntConstant(module, "OPEN", OPEN) < 0 ||
        PyModule_AddIntConstant(module, "CLOSE", CLOSE) < 0 ||
        PyModule_AddIntConstant(module, "CLOSE_FORCED", CLOSE_FORCED) < 0 ||
        PyModule_AddIntConstant(module, "LEARN", LEARN) < 0 ||
        PyModule_AddObjectRef(module, "VadStep", (PyObject *)&VadStepType) < 0 ||
        PyModule_AddObjectRef(module, "FrameListener", (PyObject *)&FrameListenerType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
