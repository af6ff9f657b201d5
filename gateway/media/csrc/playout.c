/* PlayoutState: a PlayoutTrack's clock, and the frames its sender may send alone.
 *
 * gateway.media.playout's PlayoutTrack keeps its pacing here (pts 0's loop time, the next
 * frame's pts, the late/skipped counters, max_burst, whether it is behind), so its Python
 * poll() and Outbound.send_due (outbound.c) step one and the same clock. The track also "arms"
 * the state with what the next frames are when they need no Python: silence (nothing
 * queued, no on_frame_sent callback), or the middle frames of the utterance at the head
 * of the queue (PCM or pre-encoded packets; not paused, no tap, no callback). The first
 * frame of an utterance (the encoder may have to be made), its last (padding, the
 * playback's end) and everything else unusual stay in Python: the state is disarmed, or
 * the cursor reaches the armed end, and send_due says so before touching anything.
 *
 * Why C: per call per 20 ms tick that takes poll(), its tuple and the speech bookkeeping out
 * of the interpreter (measured in docs/performance.md).
 */
#include "_rtp.h"

static int PlayoutState_init(PlayoutState *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"max_burst", "frame_ticks", "frame_seconds", "early", NULL};
    int max_burst, frame_ticks;
    double frame_seconds, early;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iidd", names, &max_burst, &frame_ticks,
                                     &frame_seconds, &early))
        return -1;
    if (frame_ticks <= 0 || frame_seconds <= 0) {
        PyErr_SetString(PyExc_ValueError, "frame_ticks and frame_seconds must be positive");
        return -1;
    }
    self->max_burst = max_burst;
    self->frame_ticks = frame_ticks;
    self->frame_seconds = frame_seconds;
    self->early = early;
    return 0;
}

static void state_disarm(PlayoutState *self) {
    self->fast = FAST_NONE;
    Py_CLEAR(self->payload);
    Py_CLEAR(self->encoder);
    Py_CLEAR(self->source);
    Py_CLEAR(self->item);
    Py_CLEAR(self->playback);
}

static int PlayoutState_traverse(PlayoutState *self, visitproc visit, void *arg) {
    Py_VISIT(self->payload);
    Py_VISIT(self->encoder);
    Py_VISIT(self->source);
    Py_VISIT(self->item);
    Py_VISIT(self->playback);
    return 0;
}

static int PlayoutState_clear(PlayoutState *self) {
    state_disarm(self);
    return 0;
}

static void PlayoutState_dealloc(PlayoutState *self) {
    PyObject_GC_UnTrack(self);
    state_disarm(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}
/* The pacing step of a frame due at now (the caller checked it is): its pts. Late and
 * skipped frames counted, the next pts set, behind said, the frame counted as sent. */
long long state_step(PlayoutState *self, double now) {
    double late = state_late(self, now);
    if (late > self->frame_seconds) {
        self->late_frames++;
        if (late > self->max_burst * self->frame_seconds) {
            /* Skip the missed slots but this one; the media clock stays on the loop clock. */
            long long skip = (long long)(late / self->frame_seconds);
            self->next_pts += skip * self->frame_ticks;
            self->skipped_frames += skip;
        }
    }
    long long pts = self->pts = self->next_pts;
    self->next_pts = pts + self->frame_ticks;
    self->behind = state_late(self, now) >= -self->early;
    self->frames_sent++;
    return pts;
}

/* due(now) -> the pts of the frame due at now (stepping the clock), or None. */
static PyObject *PlayoutState_due(PlayoutState *self, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    if (!self->started) {
        PyErr_SetString(PyExc_RuntimeError, "the playout has not started");
        return NULL;
    }
    if (state_late(self, now) < -self->early)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(state_step(self, now));
}

static PyObject *PlayoutState_disarm(PlayoutState *self, PyObject *unused) {
    state_disarm(self);
    Py_RETURN_NONE;
}

static PyObject *PlayoutState_arm_silence(PlayoutState *self, PyObject *payload) {
    if (!PyBytes_CheckExact(payload)) {
        PyErr_SetString(PyExc_TypeError, "arm_silence(payload: bytes)");
        return NULL;
    }
    state_disarm(self);
    self->payload = Py_NewRef(payload);
    self->fast = FAST_SILENCE;
    Py_RETURN_NONE;
}

/* arm_speech(encoder | None, source, item, playback, index, end): frames index..end-1 of
 * the item at the head of the queue; PCM (source an int16 buffer, encoded with encoder)
 * or packets (encoder None, source a sequence of bytes). */
static PyObject *PlayoutState_arm_speech(PlayoutState *self, PyObject *const *args,
                                         Py_ssize_t nargs) {
    if (nargs != 6 || !PyLong_Check(args[4]) || !PyLong_Check(args[5]) ||
        (args[0] != Py_None && !Py_IS_TYPE(args[0], &EncoderType))) {
        PyErr_SetString(PyExc_TypeError,
                        "arm_speech(encoder: Encoder | None, source, item, playback, index: "
                        "int, end: int)");
        return NULL;
    }
    long long index = PyLong_AsLongLong(args[4]), end = PyLong_AsLongLong(args[5]);
    if (PyErr_Occurred())
        return NULL;
    state_disarm(self);
    if (args[0] != Py_None)
        self->encoder = Py_NewRef(args[0]);
    self->source = Py_NewRef(args[1]);
    self->item = Py_NewRef(args[2]);
    self->playback = Py_NewRef(args[3]);
    self->index = index;
    self->end = end;
    self->fast = args[0] != Py_None ? FAST_PCM : FAST_PACKETS;
    Py_RETURN_NONE;
}

static PyObject *PlayoutState_get_start(PlayoutState *self, void *unused) {
    if (!self->started)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(self->start);
}

static int PlayoutState_set_start(PlayoutState *self, PyObject *value, void *unused) {
    if (value == NULL || value == Py_None) {
        self->started = 0;
        return 0;
    }
    double start = PyFloat_AsDouble(value);
    if (start == -1.0 && PyErr_Occurred())
        return -1;
    self->start = start;
    self->started = 1;
    return 0;
}

static PyObject *PlayoutState_get_fast(PlayoutState *self, void *unused) {
    static const char *modes[] = {"", "silence", "pcm", "packets"};
    return PyUnicode_FromString(modes[self->fast]);
}

static PyMethodDef PlayoutState_methods[] = {
    {"due", (PyCFunction)PlayoutState_due, METH_O,
     "due(now) -> the pts of the frame due at now (the clock steps), or None."},
    {"disarm", (PyCFunction)PlayoutState_disarm, METH_NOARGS,
     "Send nothing without Python (until armed again)."},
    {"arm_silence", (PyCFunction)PlayoutState_arm_silence, METH_O,
     "arm_silence(payload): frames due are this silence packet, sendable without Python."},
    {"arm_speech", (PyCFunction)(void (*)(void))PlayoutState_arm_speech, METH_FASTCALL,
     "arm_speech(encoder, source, item, playback, index, end): those frames of the head "
     "utterance are sendable without Python."},
    {NULL},
};

static PyMemberDef PlayoutState_members[] = {
    {"pts", T_LONGLONG, offsetof(PlayoutState, pts), READONLY, NULL},
    {"next_pts", T_LONGLONG, offsetof(PlayoutState, next_pts), READONLY, NULL},
    {"frames_sent", T_LONGLONG, offsetof(PlayoutState, frames_sent), READONLY, NULL},
    {"speech_frames", T_LONGLONG, offsetof(PlayoutState, speech_frames), 0, NULL},
    {"late_frames", T_LONGLONG, offsetof(PlayoutState, late_frames), READONLY, NULL},
    {"skipped_frames", T_LONGLONG, offsetof(PlayoutState, skipped_frames), READONLY, NULL},
    {"behind", T_BOOL, offsetof(PlayoutState, behind), READONLY, NULL},
    {"max_burst", T_INT, offsetof(PlayoutState, max_burst), READONLY, NULL},
    {NULL},
};

static PyGetSetDef PlayoutState_getset[] = {
    {"start", (getter)PlayoutState_get_start, (setter)PlayoutState_set_start,
     "Loop time of pts 0, None until set.", NULL},
    {"fast", (getter)PlayoutState_get_fast, NULL,
     "What send_due may send alone: '', 'silence', 'pcm' or 'packets' (tests).", NULL},
    {NULL},
};

PyTypeObject PlayoutStateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway.media._rtp.PlayoutState",
    .tp_basicsize = sizeof(PlayoutState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "PlayoutState(max_burst, frame_ticks, frame_seconds, early): a PlayoutTrack's "
              "clock, and what its sender may send without Python.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)PlayoutState_init,
    .tp_traverse = (traverseproc)PlayoutState_traverse,
    .tp_clear = (inquiry)PlayoutState_clear,
    .tp_dealloc = (destructor)PlayoutState_dealloc,
    .tp_methods = PlayoutState_methods,
    .tp_members = PlayoutState_members,
    .tp_getset = PlayoutState_getset,
};
