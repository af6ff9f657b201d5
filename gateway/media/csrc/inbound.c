/* Inbound: a call's inbound SRTP, one call per datagram. It unprotects the datagram with
 * libsrtp, parses the RTP header, keeps the reception statistics of the call's SSRC, and
 * decodes in-order Opus of the armed stream straight into a numpy frame for the call's
 * on_frame; anything else (another SSRC, a gap, a disabled receiver, a corrupt packet) goes
 * to the Python path (aiortc's jitter buffer) unchanged. SRTCP compounds are unprotected here
 * too and handed to on_rtcp.
 *
 * Why C: this was ~30 small Python steps per 20 ms frame (SRTP call, parse, statistics,
 * jitter bookkeeping, decode call); now it is one C call per datagram.
 */
#include "_rtp.h"

/* The longest Opus packet (120 ms) at the pipeline's 16 kHz. */
#define MAX_FRAME_SAMPLES 1920

static void inbound_release(Inbound *self) {
    self->armed = 0;
    self->decode = NULL;
    self->decoder = NULL;
    Py_CLEAR(self->decoder_owner);
    Py_CLEAR(self->on_frame);
    Py_CLEAR(self->empty);
    Py_CLEAR(self->dtype);
    Py_CLEAR(self->receiver);
}

static int Inbound_init(Inbound *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"unprotect", "session",        "session_owner", "slow",
                            "on_error",  "unprotect_rtcp", "on_rtcp",       NULL};
    PyObject *unprotect, *session, *owner, *slow, *on_error, *unprotect_rtcp = Py_None,
                                                             *on_rtcp = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOO|OO", names, &unprotect, &session, &owner,
                                     &slow, &on_error, &unprotect_rtcp, &on_rtcp))
        return -1;
    if (!PyCallable_Check(slow) || !PyCallable_Check(on_error)) {
        PyErr_SetString(PyExc_TypeError, "slow and on_error must be callable");
        return -1;
    }
    if ((unprotect_rtcp == Py_None) != (on_rtcp == Py_None) ||
        (on_rtcp != Py_None && !PyCallable_Check(on_rtcp))) {
        PyErr_SetString(PyExc_TypeError, "unprotect_rtcp and a callable on_rtcp go together");
        return -1;
    }
    void *function = as_pointer(unprotect, "unprotect"), *context = NULL;
    if (function == NULL || (context = as_pointer(session, "session")) == NULL)
        return -1;
    void *rtcp_function = NULL;
    if (unprotect_rtcp != Py_None &&
        (rtcp_function = as_pointer(unprotect_rtcp, "unprotect_rtcp")) == NULL)
        return -1;
    self->unprotect_rtcp = (srtp_call)rtcp_function;
    Py_XSETREF(self->on_rtcp, on_rtcp == Py_None ? NULL : Py_NewRef(on_rtcp));
    self->unprotect = (srtp_call)function;
    self->session = context;
    Py_XSETREF(self->session_owner, Py_NewRef(owner));
    Py_XSETREF(self->slow, Py_NewRef(slow));
    Py_XSETREF(self->on_error, Py_NewRef(on_error));
    return 0;
}

static int Inbound_traverse(Inbound *self, visitproc visit, void *arg) {
    Py_VISIT(self->session_owner);
    Py_VISIT(self->slow);
    Py_VISIT(self->on_error);
    Py_VISIT(self->on_rtcp);
    Py_VISIT(self->decoder_owner);
    Py_VISIT(self->on_frame);
    Py_VISIT(self->empty);
    Py_VISIT(self->dtype);
    Py_VISIT(self->receiver);
    return 0;
}

static int Inbound_clear(Inbound *self) {
    inbound_release(self);
    Py_CLEAR(self->session_owner);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->on_error);
    Py_CLEAR(self->on_rtcp);
    self->unprotect_rtcp = NULL;
    return 0;
}

static void Inbound_dealloc(Inbound *self) {
    PyObject_GC_UnTrack(self);
    Inbound_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Hand the raised exception to on_error (which logs it): a failing callback must not
 * unwind into asyncio's socket callback. Returns 0, or -1 if on_error itself failed. */
static int report_error(Inbound *self) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value == NULL) {
        Py_XDECREF(type);
        Py_XDECREF(traceback);
        return 0;
    }
    if (traceback != NULL)
        PyException_SetTraceback(value, traceback);
    PyObject *on_error = Py_NewRef(self->on_error);
    PyObject *result = PyObject_CallOneArg(on_error, value);
    Py_DECREF(on_error);
    Py_XDECREF(type);
    Py_DECREF(value);
    Py_XDECREF(traceback);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* The fast path: 1 if the packet was decoded and handed on, 0 if it goes to Python,
 * -1 with an exception set. */
static int take_audio(Inbound *self, const rtp_header *h, double now) {
    if (!self->armed || h->ssrc != self->ssrc || h->payload_type != self->opus_pt ||
        h->timestamp != self->next_timestamp)
        return 0;
    /* aiortc's receiver drops packets while disabled (a direction change): so does Python's path. */
    PyObject *flag = PyObject_GetAttr(self->receiver, enabled_name);
    if (flag == NULL)
        return -1;
    int enabled = PyObject_IsTrue(flag);
    Py_DECREF(flag);
    if (enabled <= 0)
        return enabled;
    const uint8_t *payload = self->buffer + h->start;
    Py_ssize_t length = h->end - h->start;
    int duration = opus_duration(payload, length);
    if (duration <= 0 || duration % 3 != 0 || duration / 3 > MAX_FRAME_SAMPLES)
        return 0; /* the Python path conceals it and counts it */
    int samples = duration / 3;
    PyObject *size = PyLong_FromLong(samples);
    if (size == NULL)
        return -1;
    PyObject *empty = Py_NewRef(self->empty), *dtype = Py_NewRef(self->dtype);
    PyObject *call_args[2] = {size, dtype};
    PyObject *frame = PyObject_Vectorcall(empty, call_args, 2, NULL);
    Py_DECREF(size);
    Py_DECREF(empty);
    Py_DECREF(dtype);
    if (frame == NULL)
        return -1;
    /* Python code ran above (an attribute, numpy): it may have disarmed or released us. */
    if (!self->armed || self->decoder == NULL) {
        Py_DECREF(frame);
        return 0;
    }
    Py_buffer pcm;
    if (PyObject_GetBuffer(frame, &pcm, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        Py_DECREF(frame);
        return -1;
    }
    int decoded = -1;
    if (pcm.len == (Py_ssize_t)samples * 2)
        decoded = self->decode(self->decoder, payload, (int32_t)length, (int16_t *)pcm.buf,
                               samples, 0);
    PyBuffer_Release(&pcm);
    if (decoded != samples) {
        /* libopus refuses a corrupt packet before touching its state: Python's path
         * decodes it again, fails the same way and conceals it, as for any other. */
        Py_DECREF(frame);
        return 0;
    }
    stats_add(&self->stats, h->sequence_number, h->timestamp, now);
    self->fast_packets++;
    self->fast_bytes += (unsigned long long)length;
    self->next_timestamp += (uint32_t)duration;
    self->slot = (uint32_t)duration;
    self->taken = 1;
    /* Our own reference: the callback may replace or release self->on_frame. */
    PyObject *on_frame = Py_NewRef(self->on_frame);
    PyObject *result = PyObject_CallOneArg(on_frame, frame);
    Py_DECREF(on_frame);
    Py_DECREF(frame);
    if (result == NULL)
        return report_error(self) < 0 ? -1 : 1;
    Py_DECREF(result);
    return 1;
}

/* Copy an SRTP or SRTCP datagram into the buffer and unprotect it there with
 * `unprotect`: its length, or -1 once the drop is counted (too long, not authentic, or a
 * length libsrtp should never give: it only ever shortens a packet it unprotects). */
static int unprotect_datagram(Inbound *self, const uint8_t *data, Py_ssize_t size,
                              srtp_call unprotect) {
    self->rx_packets++;
    self->rx_bytes += (unsigned long long)size;
    if (size > BUFFER_SIZE) {
        self->too_long++;
        return -1;
    }
    memcpy(self->buffer, data, (size_t)size);
    int length = (int)size;
    if (unprotect(self->session, self->buffer, &length) != 0) {
        self->auth_failures++;
        return -1;
    }
    if (length < 0 || length > size) {
        self->malformed++;
        return -1;
    }
    return length;
}

/* One SRTP datagram that arrived at `now` (wall-clock seconds): 0, or -1 with an
 * exception only if reporting a callback's failure failed or memory ran out. */
int inbound_take(Inbound *self, const uint8_t *data, Py_ssize_t size, double now) {
    if (self->unprotect == NULL || self->slow == NULL || self->on_error == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Inbound is not initialized");
        return -1;
    }
    int length = unprotect_datagram(self, data, size, self->unprotect);
    if (length < 0)
        return 0;
    rtp_header h;
    if (parse_rtp(self->buffer, length, &h) < 0) {
        self->malformed++;
        return 0;
    }
    int taken = take_audio(self, &h, now);
    if (taken < 0)
        return report_error(self);
    if (taken)
        return 0;
    PyObject *packet = PyBytes_FromStringAndSize((const char *)self->buffer, length);
    if (packet == NULL)
        return -1;
    PyObject *arrival = PyLong_FromLongLong((long long)((now + NTP_UNIX_OFFSET) * 1000));
    if (arrival == NULL) {
        Py_DECREF(packet);
        return -1;
    }
    PyObject *call_args[2] = {packet, arrival};
    PyObject *slow = Py_NewRef(self->slow);
    /* The packet may be read later than it came (at the frame clock's tick): the
     * statistics count() keeps for it must use its arrival, as the fast path's do. */
    double outer = self->arrival;
    self->arrival = now;
    PyObject *result = PyObject_Vectorcall(slow, call_args, 2, NULL);
    self->arrival = outer;
    Py_DECREF(slow);
    Py_DECREF(packet);
    Py_DECREF(arrival);
    if (result == NULL)
        return report_error(self);
    Py_DECREF(result);
    return 0;
}

/* One SRTCP datagram: unprotect it and hand the compound to on_rtcp, which reads it (a
 * failure to authenticate is counted and dropped, as for RTP). 0, or -1 as inbound_take. */
int inbound_take_rtcp(Inbound *self, const uint8_t *data, Py_ssize_t size) {
    int length = unprotect_datagram(self, data, size, self->unprotect_rtcp);
    if (length < 0)
        return 0;
    PyObject *packet = PyBytes_FromStringAndSize((const char *)self->buffer, length);
    if (packet == NULL)
        return -1;
    PyObject *on_rtcp = Py_NewRef(self->on_rtcp);
    PyObject *result = PyObject_CallOneArg(on_rtcp, packet);
    Py_DECREF(on_rtcp);
    Py_DECREF(packet);
    if (result == NULL)
        return report_error(self);
    Py_DECREF(result);
    return 0;
}

static PyObject *inbound_receive(Inbound *self, PyObject *data) {
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "an SRTP packet must be bytes");
        return NULL;
    }
    if (inbound_take(self, (const uint8_t *)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                     wall_clock()) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Inbound_configure(Inbound *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"decode", "decoder", "decoder_owner", "on_frame",
                            "empty", "dtype", "receiver", NULL};
    PyObject *decode, *decoder, *owner, *on_frame, *empty, *dtype, *receiver;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOO", names, &decode, &decoder, &owner,
                                     &on_frame, &empty, &dtype, &receiver))
        return NULL;
    if (!PyCallable_Check(on_frame) || !PyCallable_Check(empty)) {
        PyErr_SetString(PyExc_TypeError, "on_frame and empty must be callable");
        return NULL;
    }
    void *function = as_pointer(decode, "decode"), *state = NULL;
    if (function == NULL || (state = as_pointer(decoder, "decoder")) == NULL)
        return NULL;
    inbound_release(self);
    self->decode = (opus_decode_call)function;
    self->decoder = state;
    self->decoder_owner = Py_NewRef(owner);
    self->on_frame = Py_NewRef(on_frame);
    self->empty = Py_NewRef(empty);
    self->dtype = Py_NewRef(dtype);
    self->receiver = Py_NewRef(receiver);
    Py_RETURN_NONE;
}

static PyObject *Inbound_arm(Inbound *self, PyObject *args) {
    unsigned int ssrc, next_timestamp, slot;
    int opus_pt;
    if (!PyArg_ParseTuple(args, "IiII", &ssrc, &opus_pt, &next_timestamp, &slot))
        return NULL;
    if (self->decoder == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() the decoder before arm()");
        return NULL;
    }
    self->ssrc = ssrc;
    self->opus_pt = opus_pt;
    self->next_timestamp = next_timestamp;
    self->slot = slot;
    self->taken = 0;
    self->armed = 1;
    Py_RETURN_NONE;
}

/* Disarm; if packets went the fast way since arm(), where the stream stands:
 * (next RTP timestamp, duration of the last packet), else None. */
static PyObject *Inbound_disarm(Inbound *self, PyObject *unused) {
    int taken = self->armed && self->taken;
    self->armed = 0;
    self->taken = 0;
    if (!taken)
        Py_RETURN_NONE;
    return Py_BuildValue("(kk)", (unsigned long)self->next_timestamp, (unsigned long)self->slot);
}

static PyObject *Inbound_release(Inbound *self, PyObject *unused) {
    inbound_release(self);
    Py_RETURN_NONE;
}

static PyObject *Inbound_track(Inbound *self, PyObject *arg) {
    unsigned long ssrc = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    if (ssrc > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_ValueError, "an SSRC is 32 bits");
        return NULL;
    }
    self->tracking = 1;
    self->tracked_ssrc = (uint32_t)ssrc;
    memset(&self->stats, 0, sizeof self->stats);
    Py_RETURN_NONE;
}

static PyObject *Inbound_count(Inbound *self, PyObject *args) {
    unsigned int seq, timestamp;
    if (!PyArg_ParseTuple(args, "II", &seq, &timestamp))
        return NULL;
    stats_add(&self->stats, (uint16_t)seq, (uint32_t)timestamp,
              self->arrival > 0 ? self->arrival : wall_clock());
    Py_RETURN_NONE;
}

/* (base_seq, max_seq, cycles, packets_received, jitter_q4); the sequence numbers None
 * before the first packet, as in aiortc. */
static PyObject *Inbound_statistics(Inbound *self, PyObject *unused) {
    const stream_stats *s = &self->stats;
    if (!s->has_seq)
        return Py_BuildValue("(OOLLL)", Py_None, Py_None, s->cycles, s->received, s->jitter_q4);
    return Py_BuildValue("(iiLLL)", (int)s->base_seq, (int)s->max_seq, s->cycles, s->received,
                         s->jitter_q4);
}

static PyObject *Inbound_call(Inbound *self, PyObject *args, PyObject *kwargs) {
    PyObject *data;
    if (!PyArg_ParseTuple(args, "O", &data))
        return NULL;
    return inbound_receive(self, data);
}

static PyObject *Inbound_get_tracked(Inbound *self, void *unused) {
    if (!self->tracking)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(self->tracked_ssrc);
}

static PyObject *Inbound_get_armed(Inbound *self, void *unused) {
    return PyBool_FromLong(self->armed);
}

static PyMethodDef Inbound_methods[] = {
    {"receive", (PyCFunction)inbound_receive, METH_O,
     "Take one SRTP datagram: unprotect, parse, decode or hand to the slow path."},
    {"configure", (PyCFunction)(void (*)(void))Inbound_configure, METH_VARARGS | METH_KEYWORDS,
     "Set the decoder and frame callback of the fast path (disarms)."},
    {"arm", (PyCFunction)Inbound_arm, METH_VARARGS,
     "arm(ssrc, opus_pt, next_timestamp, slot): take in-order audio of ssrc."},
    {"disarm", (PyCFunction)Inbound_disarm, METH_NOARGS,
     "Stop the fast path; (next_timestamp, slot) if it took packets since arm()."},
    {"release", (PyCFunction)Inbound_release, METH_NOARGS,
     "Disarm and drop the decoder and callbacks (before the decoder is freed)."},
    {"track", (PyCFunction)Inbound_track, METH_O, "Keep reception statistics of this SSRC."},
    {"count", (PyCFunction)Inbound_count, METH_VARARGS,
     "count(seq, timestamp): a packet of the tracked SSRC taken by the Python path."},
    {"statistics", (PyCFunction)Inbound_statistics, METH_NOARGS,
     "(base_seq, max_seq, cycles, packets_received, jitter_q4)"},
    {NULL},
};

#define COUNTER(name) {#name, T_ULONGLONG, offsetof(Inbound, name), READONLY, NULL}
static PyMemberDef Inbound_members[] = {
    COUNTER(rx_packets), COUNTER(rx_bytes), COUNTER(fast_packets), COUNTER(fast_bytes),
    COUNTER(auth_failures), COUNTER(malformed), COUNTER(too_long), {NULL},
};

static PyGetSetDef Inbound_getset[] = {
    {"tracked_ssrc", (getter)Inbound_get_tracked, NULL, "The SSRC whose statistics are kept."},
    {"armed", (getter)Inbound_get_armed, NULL, "Whether the fast path is on."},
    {NULL},
};

PyTypeObject InboundType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway.media._rtp.Inbound",
    .tp_basicsize = sizeof(Inbound),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A call's inbound SRTP: unprotect, parse, statistics, in-order Opus decode.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Inbound_init,
    .tp_traverse = (traverseproc)Inbound_traverse,
    .tp_clear = (inquiry)Inbound_clear,
    .tp_dealloc = (destructor)Inbound_dealloc,
    .tp_call = (ternaryfunc)Inbound_call,
    .tp_methods = Inbound_methods,
    .tp_members = Inbound_members,
    .tp_getset = Inbound_getset,
};
