/* Outbound: a sender's RTP stream. It builds each frame's RTP header (sequence number,
 * timestamp, SSRC, the negotiated header extensions) straight into the call's Route buffer
 * and keeps what the next RTCP sender report says. send() takes a ready payload, send_pcm()
 * encodes a PCM frame with the call's Encoder first, and send_due() sends every frame of a
 * PlayoutState due at a tick that needs no Python (silence, the middle of an utterance),
 * in one call per call per tick. With no open Route, the packet goes back in clear to the
 * Python path.
 *
 * Why C: per frame this replaces aiortc's RTCRtpSender loop (a packet object, its
 * serialisation, an NTP timestamp and Fractions, a sendto) and PlayoutTrack.poll's Python.
 */
#include "_rtp.h"

#define MAX_EXTENSIONS 256

typedef struct {
    PyObject_HEAD
    PyObject *transport; /* its _native_route: a Route, or None for the Python path */
    uint8_t first_byte, second_byte;
    uint32_t ssrc, timestamp_origin;
    uint16_t sequence_number;
    uint8_t extensions[MAX_EXTENSIONS];
    Py_ssize_t extensions_length;
    /* What the next RTCP sender report says. */
    unsigned long long packets, octets, ntp_timestamp;
    uint32_t rtp_timestamp;
} Outbound;

static int Outbound_init(Outbound *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"transport", "first_byte", "second_byte", "ssrc", "extensions",
                            "sequence_number", "timestamp_origin", NULL};
    PyObject *transport;
    unsigned char first, second;
    unsigned int ssrc, sequence, origin;
    Py_buffer extensions;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ObbIy*II", names, &transport, &first, &second,
                                     &ssrc, &extensions, &sequence, &origin))
        return -1;
    if (extensions.len > MAX_EXTENSIONS || extensions.len % 4 != 0) {
        PyBuffer_Release(&extensions);
        PyErr_SetString(PyExc_ValueError, "header extensions: a multiple of 4, at most 256 bytes");
        return -1;
    }
    memcpy(self->extensions, extensions.buf, (size_t)extensions.len);
    self->extensions_length = extensions.len;
    PyBuffer_Release(&extensions);
    Py_XSETREF(self->transport, Py_NewRef(transport));
    self->first_byte = first;
    self->second_byte = second;
    self->ssrc = ssrc;
    self->sequence_number = (uint16_t)sequence;
    self->timestamp_origin = origin;
    return 0;
}

static int Outbound_traverse(Outbound *self, visitproc visit, void *arg) {
    Py_VISIT(self->transport);
    return 0;
}

static int Outbound_clear(Outbound *self) {
    Py_CLEAR(self->transport);
    return 0;
}

static void Outbound_dealloc(Outbound *self) {
    PyObject_GC_UnTrack(self);
    Outbound_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Write the RTP packet into out (capacity bytes); its length, or -1 with an exception. */
static Py_ssize_t build_packet(Outbound *self, const uint8_t *payload, Py_ssize_t payload_length,
                               uint32_t timestamp, uint8_t *out, Py_ssize_t capacity) {
    Py_ssize_t length = RTP_HEADER + self->extensions_length + payload_length;
    if (length > capacity) {
        PyErr_SetString(PyExc_ValueError, "packet is too long");
        return -1;
    }
    out[0] = self->first_byte;
    out[1] = self->second_byte;
    out[2] = (uint8_t)(self->sequence_number >> 8);
    out[3] = (uint8_t)self->sequence_number;
    for (int i = 0; i < 4; i++) {
        out[4 + i] = (uint8_t)(timestamp >> (24 - 8 * i));
        out[8 + i] = (uint8_t)(self->ssrc >> (24 - 8 * i));
    }
    memcpy(out + RTP_HEADER, self->extensions, (size_t)self->extensions_length);
    memcpy(out + RTP_HEADER + self->extensions_length, payload, (size_t)payload_length);
    return length;
}

static inline void count_sent(Outbound *self, Py_ssize_t payload_length, uint32_t timestamp) {
    self->sequence_number++;
    self->packets++;
    self->octets += (unsigned long long)payload_length;
    self->rtp_timestamp = timestamp;
    self->ntp_timestamp =
        (unsigned long long)((wall_clock() + NTP_UNIX_OFFSET) * 4294967296.0);
}

/* The packet with RTP timestamp origin + pts: sent (None), or, when the transport has no
 * open Route, the RTP packet in clear for the Python path (bytes). NULL with an exception. */
static PyObject *outbound_send_at(Outbound *self, const uint8_t *payload,
                                  Py_ssize_t payload_length, uint32_t pts) {
    uint32_t timestamp = self->timestamp_origin + pts;
    if (self->transport == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Outbound is not initialized");
        return NULL;
    }
    PyObject *route = PyObject_GetAttr(self->transport, route_name);
    if (route == NULL)
        return NULL;
    if (Py_IS_TYPE(route, &RouteType) && ((Route *)route)->open) {
        Route *r = (Route *)route;
        Py_ssize_t length = build_packet(self, payload, payload_length, timestamp, r->buffer,
                                         BUFFER_SIZE - SRTP_MAX_TRAILER);
        if (length < 0 || route_send_with(r, r->protect, (int)length) < 0) {
            Py_DECREF(route);
            return NULL;
        }
        Py_DECREF(route);
        count_sent(self, payload_length, timestamp);
        Py_RETURN_NONE;
    }
    Py_DECREF(route);
    Py_ssize_t length = RTP_HEADER + self->extensions_length + payload_length;
    PyObject *packet = PyBytes_FromStringAndSize(NULL, length);
    if (packet == NULL)
        return NULL;
    build_packet(self, payload, payload_length, timestamp, (uint8_t *)PyBytes_AS_STRING(packet),
                 length);
    count_sent(self, payload_length, timestamp);
    return packet;
}

static PyObject *outbound_send(Outbound *self, const uint8_t *payload, Py_ssize_t payload_length,
                               PyObject *pts) {
    uint32_t low = (uint32_t)PyLong_AsUnsignedLongLongMask(pts);
    if (PyErr_Occurred())
        return NULL;
    return outbound_send_at(self, payload, payload_length, low);
}

/* send(payload, pts): a ready payload (silence, pre-encoded speech). */
static PyObject *Outbound_send(Outbound *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "send(payload: bytes, pts: int)");
        return NULL;
    }
    return outbound_send(self, (const uint8_t *)PyBytes_AS_STRING(args[0]),
                         PyBytes_GET_SIZE(args[0]), args[1]);
}

/* send_pcm(encoder, pcm, pts): encode one PCM frame with the OpusEncoder's compiled state
 * (its _native_encoder) and send it as send() would, in one call per frame: no bytes
 * object for the payload, no ctypes, no Python frame between the encoder and the wire. */
static PyObject *Outbound_send_pcm(Outbound *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "send_pcm(encoder: OpusEncoder, pcm, pts: int)");
        return NULL;
    }
    PyObject *native = PyObject_GetAttr(args[0], native_encoder_name);
    if (native == NULL)
        return NULL;
    if (!Py_IS_TYPE(native, &EncoderType)) {
        Py_DECREF(native);
        PyErr_SetString(PyExc_TypeError, "the encoder has no compiled state");
        return NULL;
    }
    Encoder *encoder = (Encoder *)native;
    PyObject *result = NULL;
    int32_t size = encoder_encode(encoder, args[1]);
    /* outbound_send copies encoder->packet into the RTP packet before any Python but the
     * transport's _native_route lookup (a plain attribute) runs: nothing encodes over it. */
    if (size >= 0)
        result = outbound_send(self, encoder->packet, size, args[2]);
    Py_DECREF(native);
    return result;
}

/* The speech frame at the armed cursor into payload and length (the encoder's packet, or a
 * or -1 with an exception. Nothing of the state changes here. */
static int speech_frame(PlayoutState *s, const uint8_t **payload, Py_ssize_t *length,
                        PyObject **owned) {
    *owned = NULL;
    if (s->fast == FAST_PACKETS) {
        PyObject *packet = PySequence_GetItem(s->source, (Py_ssize_t)s->index);
        if (packet == NULL)
            return -1;
        if (!PyBytes_CheckExact(packet)) {
            Py_DECREF(packet);
            return 0;
        }
        *owned = packet;
        *payload = (const uint8_t *)PyBytes_AS_STRING(packet);
        *length = PyBytes_GET_SIZE(packet);
        return 1;
    }
    Encoder *encoder = (Encoder *)s->encoder;
    if (encoder->state == NULL)
        return 0; /* closed: Python's path raises as it did */
    Py_buffer view;
    if (PyObject_GetBuffer(s->source, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    Py_ssize_t frame_bytes = (Py_ssize_t)encoder->frame_samples * 2;
    int taken = 0;
    int32_t size = 0;
    /* Only whole frames inside the buffer: the padded tail is Python's. */
    if (view.ndim == 1 && is_int16_format(view.format) &&
        (s->index + 1) * frame_bytes <= view.len) {
        size = encoder_encode_samples(encoder, (const char *)view.buf + s->index * frame_bytes);
        taken = size < 0 ? -1 : 1;
    }
    PyBuffer_Release(&view);
    *payload = encoder->packet;
    *length = size;
    return taken;
}

/* The cursor's frame was sent: the queue entry's and playback's counts, as Python's
 * _next_speech keeps them (both count the item's frames sent: they are equal). */
static int speech_sent(PlayoutState *s) {
    s->speech_frames++;
    s->index++;
    PyObject *index = PyLong_FromLongLong(s->index);
    if (index == NULL)
        return -1;
    int status = PyObject_SetAttr(s->item, next_index_name, index) < 0 ||
                         PyObject_SetAttr(s->playback, frames_sent_name, index) < 0
                     ? -1
                     : 0;
    Py_DECREF(index);
    return status;
}

/* send_due(state, now): send every frame of the PlayoutState due at now that needs no
 * Python (see PlayoutState), one after another while it is behind. None once nothing is
 * due; False when the next frame due is Python's (PlayoutTrack.poll: nothing of it done
 * here); an RTP packet in clear (bytes) when the transport has no open route: the frame
 * is counted, the caller sends the packet and calls again. */
static PyObject *Outbound_send_due(Outbound *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !Py_IS_TYPE(args[0], &PlayoutStateType) || !PyFloat_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "send_due(state: PlayoutState, now: float)");
        return NULL;
    }
    PlayoutState *s = (PlayoutState *)args[0];
    double now = PyFloat_AS_DOUBLE(args[1]);
    for (;;) {
        if (s->fast == FAST_NONE || !s->started ||
            (s->fast != FAST_SILENCE && s->index >= s->end))
            Py_RETURN_FALSE;
        if (state_late(s, now) < -s->early)
            Py_RETURN_NONE;
        PyObject *result;
        if (s->fast == FAST_SILENCE) {
            long long pts = state_step(s, now);
            result = outbound_send_at(self, (const uint8_t *)PyBytes_AS_STRING(s->payload),
                                      PyBytes_GET_SIZE(s->payload), (uint32_t)pts);
        } else {
            const uint8_t *payload;
            Py_ssize_t length;
            PyObject *owned;
            int taken = speech_frame(s, &payload, &length, &owned);
            if (taken < 0)
                return NULL;
            if (taken == 0)
                Py_RETURN_FALSE;
            long long pts = state_step(s, now);
            /* Counted before the send, as poll() counts before its caller sends. */
            if (speech_sent(s) < 0) {
                Py_XDECREF(owned);
                return NULL;
            }
            result = outbound_send_at(self, payload, length, (uint32_t)pts);
            Py_XDECREF(owned);
        }
        if (result != Py_None)
            return result; /* NULL (an exception), or a packet for the Python path */
        Py_DECREF(result);
        if (!s->behind)
            Py_RETURN_NONE;
    }
}

static PyMethodDef Outbound_methods[] = {
    {"send", (PyCFunction)(void (*)(void))Outbound_send, METH_FASTCALL,
     "send(payload, pts) -> None if sent, else the RTP packet for the Python path."},
    {"send_pcm", (PyCFunction)(void (*)(void))Outbound_send_pcm, METH_FASTCALL,
     "send_pcm(encoder, pcm, pts): encode one frame and send it as send() would."},
    {"send_due", (PyCFunction)(void (*)(void))Outbound_send_due, METH_FASTCALL,
     "send_due(state, now): send the frames due that need no Python; None, False (the next "
     "is Python's) or a packet for the Python path."},
    {NULL},
};

static PyMemberDef Outbound_members[] = {
    {"packets", T_ULONGLONG, offsetof(Outbound, packets), READONLY, NULL},
    {"octets", T_ULONGLONG, offsetof(Outbound, octets), READONLY, NULL},
    {"ntp_timestamp", T_ULONGLONG, offsetof(Outbound, ntp_timestamp), READONLY, NULL},
    {"rtp_timestamp", T_UINT, offsetof(Outbound, rtp_timestamp), READONLY, NULL},
    {"sequence_number", T_USHORT, offsetof(Outbound, sequence_number), READONLY, NULL},
    {NULL},
};

PyTypeObject OutboundType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway.media._rtp.Outbound",
    .tp_basicsize = sizeof(Outbound),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A sender's RTP stream: header, sequence numbers, sender-report counters.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Outbound_init,
    .tp_traverse = (traverseproc)Outbound_traverse,
    .tp_clear = (inquiry)Outbound_clear,
    .tp_dealloc = (destructor)Outbound_dealloc,
    .tp_methods = Outbound_methods,
    .tp_members = Outbound_members,
};
