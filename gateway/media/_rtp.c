/* The per-packet RTP work of a call, in C: see gateway/media/native.py for how it is used.
 *
 * Why C: after the previous round, each 20 ms frame still went through ~30
 * small Python steps in each direction (SRTP call, header parse, statistics,
 * jitter bookkeeping, decode call, header build, sendto), and the interpreter
 * was half the gateway's CPU. Here one call per datagram and one per frame do
 * that work; everything unusual goes back to the Python path, unchanged.
 *
 * No library is linked: libsrtp and libopus are the copies the process has
 * already loaded (pylibsrtp's and PyAV's); Python hands in their functions'
 * addresses and the state pointers, and keeps their owners alive by handing
 * those in too (this module holds references to them).
 *
 * Everything read from the network is bounds-checked against the length
 * libsrtp returns, which is itself checked against the buffer. Nothing here
 * may crash the process: a crash ends every call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* pylibsrtp's own buffer size; a datagram longer than this is not SRTP we sent or accept. */
#define BUFFER_SIZE 1500
/* libsrtp's SRTP_MAX_TRAILER_LEN: protect() may grow a packet by this much. */
#define SRTP_MAX_TRAILER 144
/* libsrtp's SRTP_MAX_SRTCP_TRAILER_LEN: the same for protect_rtcp() (the SRTCP index too). */
#define SRTCP_MAX_TRAILER 148
#define RTP_HEADER 12
#define OPUS_RATE 48000
#define NTP_UNIX_OFFSET 2208988800.0
/* The longest Opus packet (120 ms) at the pipeline's 16 kHz. */
#define MAX_FRAME_SAMPLES 1920

/* libsrtp 2: srtp_err_status_t srtp_protect(srtp_t, void *rtp_hdr, int *len_ptr). */
typedef int (*srtp_call)(void *session, void *packet, int *length);
typedef int (*opus_decode_call)(void *decoder, const unsigned char *data, int32_t length,
                                int16_t *pcm, int frame_size, int decode_fec);

static double wall_clock(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

/* Pointers come in from Python as ints: refuse NULL, which ctypes/cffi give for "none". */
static void *as_pointer(PyObject *value, const char *what) {
    void *pointer = PyLong_AsVoidPtr(value);
    if (pointer == NULL && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "%s is a NULL pointer", what);
    return pointer;
}

/* --- RTP header ------------------------------------------------------------------- */

typedef struct {
    int payload_type, marker;
    uint16_t sequence_number;
    uint32_t timestamp, ssrc;
    Py_ssize_t start, end; /* the payload: data[start:end] */
} rtp_header;

static uint32_t read32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* What gateway.media.transport.parse_inbound accepts, with the same arithmetic:
 * CSRCs, the extension and padding are skipped by the lengths they claim, and
 * a claim that runs past the packet makes it malformed (-1). */
static int parse_rtp(const uint8_t *data, Py_ssize_t length, rtp_header *h) {
    if (length < RTP_HEADER || data[0] >> 6 != 2)
        return -1;
    Py_ssize_t start = RTP_HEADER + 4 * (data[0] & 0x0F);
    if (data[0] & 0x10) {
        if (length < start + 4)
            return -1;
        start += 4 + 4 * (((Py_ssize_t)data[start + 2] << 8) | data[start + 3]);
    }
    Py_ssize_t end = length;
    if (data[0] & 0x20) {
        if (data[length - 1] == 0)
            return -1;
        end -= data[length - 1];
    }
    if (start > end)
        return -1;
    h->payload_type = data[1] & 0x7F;
    h->marker = data[1] >> 7;
    h->sequence_number = (uint16_t)((data[2] << 8) | data[3]);
    h->timestamp = read32(data + 4);
    h->ssrc = read32(data + 8);
    h->start = start;
    h->end = end;
    return 0;
}

/* gateway.media.opus.packet_duration: 48 kHz samples from the TOC byte, -1 if it cannot say. */
static int opus_duration(const uint8_t *payload, Py_ssize_t length) {
    static const int silk[4] = {480, 960, 1920, 2880}, hybrid[2] = {480, 960},
                     celt[4] = {120, 240, 480, 960};
    if (length < 1)
        return -1;
    int config = payload[0] >> 3, per_frame, count;
    if (config < 12)
        per_frame = silk[config & 3];
    else if (config < 16)
        per_frame = hybrid[config & 1];
    else
        per_frame = celt[config & 3];
    switch (payload[0] & 3) {
    case 0: count = 1; break;
    case 1:
    case 2: count = 2; break;
    default:
        if (length < 2 || (payload[1] & 0x3F) == 0)
            return -1;
        count = payload[1] & 0x3F;
    }
    return per_frame * count > 5760 ? -1 : per_frame * count;
}

/* --- reception statistics (aiortc's StreamStatistics.add, for one SSRC) ------------- */

typedef struct {
    int has_seq;
    uint16_t base_seq, max_seq;
    long long cycles, received, jitter_q4, last_arrival;
    uint32_t last_timestamp;
} stream_stats;

static int uint16_gt(uint16_t a, uint16_t b) {
    return (a < b && b - a > 0x8000) || (a > b && a - b < 0x8000);
}

static void stats_add(stream_stats *s, uint16_t seq, uint32_t timestamp, double now) {
    int in_order = !s->has_seq || uint16_gt(seq, s->max_seq);
    s->received++;
    if (!s->has_seq)
        s->base_seq = seq;
    if (!in_order)
        return;
    long long arrival = (long long)(now * OPUS_RATE);
    if (s->has_seq && seq < s->max_seq)
        s->cycles += 1 << 16;
    s->max_seq = seq;
    s->has_seq = 1;
    if (timestamp != s->last_timestamp && s->received > 1) {
        long long diff = (arrival - s->last_arrival) -
                         ((long long)timestamp - (long long)s->last_timestamp);
        if (diff < 0)
            diff = -diff;
        /* >> of a negative value would be floor in gcc as in Python, but jitter_q4 stays >= 0. */
        s->jitter_q4 += diff - ((s->jitter_q4 + 8) >> 4);
    }
    s->last_arrival = arrival;
    s->last_timestamp = timestamp;
}

/* --- Inbound: one call per SRTP datagram ----------------------------------------------- */

typedef struct {
    PyObject_HEAD
    srtp_call unprotect;
    void *session;
    PyObject *session_owner; /* keeps libsrtp's session alive */
    PyObject *slow;          /* slow(rtp: bytes, arrival_time_ms: int): the Python path */
    PyObject *on_error;      /* on_error(exc): a callback raised */
    /* RTCP (optional): srtp_unprotect_rtcp, and on_rtcp(rtcp: bytes) for each compound. */
    srtp_call unprotect_rtcp;
    PyObject *on_rtcp;
    /* The fast path, set by configure() and armed by arm(). */
    opus_decode_call decode;
    void *decoder;
    PyObject *decoder_owner, *on_frame, *empty, *dtype, *receiver;
    int armed, opus_pt;
    uint32_t ssrc, next_timestamp, slot;
    int taken; /* fast packets since arm(): the Python jitter buffer must catch up */
    /* The one SSRC whose statistics live here. */
    int tracking;
    uint32_t tracked_ssrc;
    stream_stats stats;
    /* While the Python path runs for a datagram: its arrival time, for count(). */
    double arrival;
    /* Counters (read-only attributes). */
    unsigned long long rx_packets, rx_bytes, fast_packets, fast_bytes, auth_failures, malformed,
        too_long;
    uint8_t buffer[BUFFER_SIZE];
} Inbound;

static PyObject *enabled_name, *fileno_name;

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
static int inbound_take(Inbound *self, const uint8_t *data, Py_ssize_t size, double now) {
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

static PyTypeObject InboundType = {
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

/* One SRTCP datagram: unprotect it and hand the compound to on_rtcp, which reads it (a
 * failure to authenticate is counted and dropped, as for RTP). 0, or -1 as inbound_take. */
static int inbound_take_rtcp(Inbound *self, const uint8_t *data, Py_ssize_t size) {
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

/* --- Port: one ICE socket's datagram_received --------------------------------------- */

typedef struct {
    PyObject_HEAD
    Inbound *inbound;
    PyObject *other; /* aioice's datagram_received: STUN, DTLS, RTCP */
} Port;

static int Port_init(Port *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"inbound", "other", NULL};
    PyObject *inbound, *other;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O", names, &InboundType, &inbound, &other))
        return -1;
    Py_XSETREF(self->inbound, (Inbound *)Py_NewRef(inbound));
    Py_XSETREF(self->other, Py_NewRef(other));
    return 0;
}

static int Port_traverse(Port *self, visitproc visit, void *arg) {
    Py_VISIT(self->inbound);
    Py_VISIT(self->other);
    return 0;
}

static int Port_clear(Port *self) {
    Py_CLEAR(self->inbound);
    Py_CLEAR(self->other);
    return 0;
}

static void Port_dealloc(Port *self) {
    PyObject_GC_UnTrack(self);
    Port_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* RTP (first byte 128-191, second not an RTCP type, RFC 7983 and RFC 5761) to the
 * Inbound, RTCP too if it has on_rtcp: 1 if taken here, 0 if it goes to `other`
 * (aioice's), -1 with an exception. */
static int port_take(Port *self, const uint8_t *bytes, Py_ssize_t size, double now) {
    if (size < 2 || bytes[0] < 128 || bytes[0] > 191)
        return 0;
    Inbound *inbound = (Inbound *)Py_NewRef(self->inbound);
    int result = 0;
    if (!(bytes[1] > 191 && bytes[1] < 209))
        result = inbound_take(inbound, bytes, size, now) < 0 ? -1 : 1;
    else if (inbound->on_rtcp != NULL && inbound->unprotect_rtcp != NULL)
        result = inbound_take_rtcp(inbound, bytes, size) < 0 ? -1 : 1;
    Py_DECREF(inbound);
    return result;
}

/* datagram_received(data, addr): RTP (first byte 128-191, second not an RTCP type,
 * RFC 7983 and RFC 5761) to the Inbound, RTCP too if it has on_rtcp, anything else to
 * `other` (aioice's). */
static PyObject *Port_call(Port *self, PyObject *args, PyObject *kwargs) {
    PyObject *data, *addr;
    if (self->inbound == NULL || self->other == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Port is not initialized");
        return NULL;
    }
    if (kwargs != NULL || !PyArg_ParseTuple(args, "OO", &data, &addr)) {
        PyErr_Clear();
        return PyObject_Call(self->other, args, kwargs);
    }
    if (PyBytes_Check(data)) {
        int handled = port_take(self, (const uint8_t *)PyBytes_AS_STRING(data),
                                PyBytes_GET_SIZE(data), wall_clock());
        if (handled < 0)
            return NULL;
        if (handled)
            Py_RETURN_NONE;
    }
    PyObject *other = Py_NewRef(self->other);
    PyObject *result = PyObject_Call(other, args, NULL);
    Py_DECREF(other);
    return result;
}

static PyTypeObject PortType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway.media._rtp.Port",
    .tp_basicsize = sizeof(Port),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Port(inbound, other): a socket's datagram_received; RTP to inbound.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Port_init,
    .tp_traverse = (traverseproc)Port_traverse,
    .tp_clear = (inquiry)Port_clear,
    .tp_dealloc = (destructor)Port_dealloc,
    .tp_call = (ternaryfunc)Port_call,
};

/* --- Reader: the sockets of an event loop's calls, read at the frame clock's tick ------ */

/* Datagrams asked of the kernel per recvmmsg; a socket's tick reads at most `limit`. */
#define READ_BATCH 16
/* Each slot takes the largest UDP payload, so nothing is ever truncated; the kernel
 * touches only the pages a datagram fills, so the rest never becomes resident. */
#define SLOT_SIZE 65536

typedef struct {
    struct mmsghdr messages[READ_BATCH];
    struct iovec vectors[READ_BATCH];
    struct sockaddr_storage addresses[READ_BATCH];
    /* SCM_TIMESTAMPNS: one struct timespec. */
    char controls[READ_BATCH][CMSG_SPACE(sizeof(struct timespec))];
} read_batch;

typedef struct {
    PyObject_HEAD
    read_batch *batch;
    uint8_t *slots;          /* READ_BATCH * SLOT_SIZE */
    PyObject *on_error;      /* on_error(exc): a datagram's handler raised */
    int busy;
    unsigned long long datagrams, drains, kernel_times;
    double waited; /* seconds from the kernel's arrival stamps to the reads, summed */
} Reader;

static int Reader_init(Reader *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"on_error", NULL};
    PyObject *on_error;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O", names, &on_error))
        return -1;
    if (!PyCallable_Check(on_error)) {
        PyErr_SetString(PyExc_TypeError, "on_error must be callable");
        return -1;
    }
    if (self->batch == NULL) {
        self->batch = PyMem_Calloc(1, sizeof *self->batch);
        self->slots = PyMem_Malloc((size_t)READ_BATCH * SLOT_SIZE);
        if (self->batch == NULL || self->slots == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    Py_XSETREF(self->on_error, Py_NewRef(on_error));
    return 0;
}

static int Reader_traverse(Reader *self, visitproc visit, void *arg) {
    Py_VISIT(self->on_error);
    return 0;
}

static int Reader_clear(Reader *self) {
    Py_CLEAR(self->on_error);
    return 0;
}

static void Reader_dealloc(Reader *self) {
    PyObject_GC_UnTrack(self);
    Reader_clear(self);
    PyMem_Free(self->batch);
    PyMem_Free(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The exception set now goes to on_error (or, if that fails too, to sys.unraisablehook):
 * one datagram's failure must not stop the rest of the tick. */
static PyObject *raised_exception(void) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value != NULL && traceback != NULL)
        PyException_SetTraceback(value, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return value;
}

static void reader_report(Reader *self) {
    PyObject *exc = raised_exception();
    if (exc == NULL)
        return;
    PyObject *result = self->on_error ? PyObject_CallOneArg(self->on_error, exc) : NULL;
    if (result == NULL)
        PyErr_WriteUnraisable(self->on_error ? self->on_error : (PyObject *)self);
    Py_XDECREF(result);
    Py_DECREF(exc);
}

/* A sender's address as asyncio's datagram_received gets it (socket.recvfrom's form):
 * (host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6. */
static PyObject *address_tuple(const struct sockaddr_storage *address, socklen_t length) {
    char host[NI_MAXHOST];
    if (getnameinfo((const struct sockaddr *)address, length, host, sizeof host, NULL, 0,
                    NI_NUMERICHOST) != 0)
        host[0] = '\0';
    if (address->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)address;
        return Py_BuildValue("(si)", host, (int)ntohs(v4->sin_port));
    }
    if (address->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)address;
        return Py_BuildValue("(siII)", host, (int)ntohs(v6->sin6_port),
                             (unsigned int)ntohl(v6->sin6_flowinfo),
                             (unsigned int)v6->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

/* When the kernel received the datagram (SO_TIMESTAMPNS), else `read_at` (now). */
static double arrival_time(Reader *self, struct msghdr *header, double read_at) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(header); c != NULL; c = CMSG_NXTHDR(header, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS &&
            c->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
            struct timespec when;
            memcpy(&when, CMSG_DATA(c), sizeof when);
            double arrival = (double)when.tv_sec + (double)when.tv_nsec / 1e9;
            self->kernel_times++;
            self->waited += read_at - arrival;
            return arrival;
        }
    }
    return read_at;
}

/* One datagram, as the Port takes it when asyncio calls it. */
static void reader_dispatch(Reader *self, Port *port, const uint8_t *data, Py_ssize_t size,
                            struct msghdr *header, double read_at) {
    int handled = port_take(port, data, size, arrival_time(self, header, read_at));
    if (handled > 0)
        return;
    if (handled < 0) {
        reader_report(self);
        return;
    }
    PyObject *packet = PyBytes_FromStringAndSize((const char *)data, size);
    PyObject *addr = packet ? address_tuple(header->msg_name, header->msg_namelen) : NULL;
    if (addr == NULL) {
        Py_XDECREF(packet);
        reader_report(self);
        return;
    }
    PyObject *call_args[2] = {packet, addr};
    PyObject *other = Py_NewRef(port->other);
    PyObject *result = PyObject_Vectorcall(other, call_args, 2, NULL);
    Py_DECREF(other);
    Py_DECREF(packet);
    Py_DECREF(addr);
    if (result == NULL)
        reader_report(self);
    Py_XDECREF(result);
}

/* drain(port, sock, error_received, limit): read what sock holds, up to limit datagrams,
 * without blocking, each through port as asyncio would hand it over; a socket error goes to
 * error_received(OSError) as asyncio's _read_ready does. The number read (errors count
 * as one), or -1 if the socket is closed. */
static PyObject *Reader_drain(Reader *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyObject_TypeCheck(args[0], &PortType)) {
        PyErr_SetString(PyExc_TypeError, "drain(port: Port, sock, error_received, limit: int)");
        return NULL;
    }
    Port *port = (Port *)args[0];
    PyObject *sock = args[1], *error_received = args[2];
    long limit = PyLong_AsLong(args[3]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (port->inbound == NULL || port->other == NULL || self->batch == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Port or Reader is not initialized");
        return NULL;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Reader.drain is not reentrant");
        return NULL;
    }
    PyObject *fd_object = PyObject_CallMethodNoArgs(sock, fileno_name);
    if (fd_object == NULL)
        return NULL;
    long fd = PyLong_AsLong(fd_object);
    Py_DECREF(fd_object);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0)
        return PyLong_FromLong(-1);
    /* Hold what the handlers might let go of: the port (an unregistered call) and sock. */
    Py_INCREF(port);
    Py_INCREF(sock);
    Py_INCREF(error_received);
    self->busy = 1;
    self->drains++;
    read_batch *b = self->batch;
    long read = 0;
    while (read < limit) {
        unsigned int wanted = (unsigned int)(limit - read < READ_BATCH ? limit - read : READ_BATCH);
        for (unsigned int i = 0; i < wanted; i++) {
            struct msghdr *h = &b->messages[i].msg_hdr;
            b->vectors[i].iov_base = self->slots + (size_t)i * SLOT_SIZE;
            b->vectors[i].iov_len = SLOT_SIZE;
            h->msg_name = &b->addresses[i];
            h->msg_namelen = sizeof b->addresses[i];
            h->msg_iov = &b->vectors[i];
            h->msg_iovlen = 1;
            h->msg_control = b->controls[i];
            h->msg_controllen = sizeof b->controls[i];
            h->msg_flags = 0;
        }
        int got = recvmmsg((int)fd, b->messages, wanted, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            /* ECONNREFUSED (an ICMP port unreachable) and the like: the protocol's. */
            int error = errno;
            read++;
            errno = error;
            PyErr_SetFromErrno(PyExc_OSError);
            PyObject *exc = raised_exception();
            PyObject *result = exc ? PyObject_CallOneArg(error_received, exc) : NULL;
            Py_XDECREF(exc);
            if (result == NULL)
                reader_report(self);
            Py_XDECREF(result);
            if (error == EBADF || error == ENOTSOCK || error == ENOMEM)
                break;
            continue;
        }
        double read_at = wall_clock();
        for (int i = 0; i < got; i++) {
            read++;
            self->datagrams++;
            reader_dispatch(self, port, self->slots + (size_t)i * SLOT_SIZE,
                            (Py_ssize_t)b->messages[i].msg_len, &b->messages[i].msg_hdr, read_at);
        }
        if ((unsigned int)got < wanted)
            break; /* the socket is empty */
    }
    self->busy = 0;
    Py_DECREF(error_received);
    Py_DECREF(sock);
    Py_DECREF(port);
    return PyLong_FromLong(read);
}

/* timestamp_arrivals(sock, on): have the kernel stamp each datagram's arrival
 * (SO_TIMESTAMPNS), which drain() reads; nothing changes on the wire. */
static PyObject *Reader_timestamp_arrivals(Reader *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "timestamp_arrivals(sock, on: bool)");
        return NULL;
    }
    PyObject *fd_object = PyObject_CallMethodNoArgs(args[0], fileno_name);
    if (fd_object == NULL)
        return NULL;
    long fd = PyLong_AsLong(fd_object);
    Py_DECREF(fd_object);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    int on = PyObject_IsTrue(args[1]);
    if (on < 0)
        return NULL;
    if (fd < 0 || setsockopt((int)fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) < 0)
        return PyErr_SetFromErrno(fd < 0 ? PyExc_ValueError : PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef Reader_methods[] = {
    {"drain", (PyCFunction)(void (*)(void))Reader_drain, METH_FASTCALL,
     "drain(port, sock, error_received, limit): read sock's datagrams through port, "
     "up to limit; the number read, -1 if sock is closed."},
    {"timestamp_arrivals", (PyCFunction)(void (*)(void))Reader_timestamp_arrivals, METH_FASTCALL,
     "timestamp_arrivals(sock, on): SO_TIMESTAMPNS on sock, read by drain()."},
    {NULL},
};

static PyMemberDef Reader_members[] = {
    {"datagrams", T_ULONGLONG, offsetof(Reader, datagrams), READONLY, "Datagrams read."},
    {"drains", T_ULONGLONG, offsetof(Reader, drains), READONLY, "drain() calls on open sockets."},
    {"kernel_times", T_ULONGLONG, offsetof(Reader, kernel_times), READONLY,
     "Datagrams whose arrival time the kernel gave."},
    {"waited", T_DOUBLE, offsetof(Reader, waited), READONLY,
     "Seconds those datagrams waited in their socket for the tick, summed."},
    {NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway.media._rtp.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Reader(on_error): reads sockets in batches (recvmmsg) through their Port.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_traverse = (traverseproc)Reader_traverse,
    .tp_clear = (inquiry)Reader_clear,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_methods = Reader_methods,
    .tp_members = Reader_members,
};

/* --- Route: where protected RTP goes (the ICE pair's socket and remote address) ------- */

typedef struct {
    PyObject_HEAD
    srtp_call protect;
    srtp_call protect_rtcp; /* optional: for send_rtcp() */
    void *session;
    PyObject *session_owner;
    PyObject *sock;     /* socket.socket: fileno() per send, -1 once closed */
    PyObject *fallback; /* fallback(srtp: bytes): asyncio's transport.sendto */
    struct sockaddr_storage address;
    socklen_t address_length;
    int open, backlog;
    unsigned long long tx_packets, tx_bytes, fallbacks;
    uint8_t buffer[BUFFER_SIZE];
} Route;

static int Route_init(Route *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"protect", "session",  "session_owner", "sock", "host",
                            "port",    "fallback", "protect_rtcp",  NULL};
    PyObject *protect, *session, *owner, *sock, *fallback, *protect_rtcp = Py_None;
    const char *host;
    int port;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOsiO|O", names, &protect, &session,
                                     &owner, &sock, &host, &port, &fallback, &protect_rtcp))
        return -1;
    if (port <= 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "fallback must be callable");
        return -1;
    }
    memset(&self->address, 0, sizeof self->address);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&self->address;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&self->address;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        self->address_length = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        self->address_length = sizeof *v6;
    } else {
        /* A name or a scoped address: leave those to asyncio. */
        PyErr_Format(PyExc_ValueError, "not a numeric address: %s", host);
        return -1;
    }
    void *function = as_pointer(protect, "protect"), *context = NULL;
    if (function == NULL || (context = as_pointer(session, "session")) == NULL)
        return -1;
    void *rtcp_function = NULL;
    if (protect_rtcp != Py_None &&
        (rtcp_function = as_pointer(protect_rtcp, "protect_rtcp")) == NULL)
        return -1;
    self->protect = (srtp_call)function;
    self->protect_rtcp = (srtp_call)rtcp_function;
    self->session = context;
    Py_XSETREF(self->session_owner, Py_NewRef(owner));
    Py_XSETREF(self->sock, Py_NewRef(sock));
    Py_XSETREF(self->fallback, Py_NewRef(fallback));
    self->open = 1;
    return 0;
}

static int Route_traverse(Route *self, visitproc visit, void *arg) {
    Py_VISIT(self->session_owner);
    Py_VISIT(self->sock);
    Py_VISIT(self->fallback);
    return 0;
}

static int Route_clear(Route *self) {
    self->open = 0;
    Py_CLEAR(self->session_owner);
    Py_CLEAR(self->sock);
    Py_CLEAR(self->fallback);
    return 0;
}

static void Route_dealloc(Route *self) {
    PyObject_GC_UnTrack(self);
    Route_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Route_close(Route *self, PyObject *unused) {
    self->open = 0;
    Py_RETURN_NONE;
}

/* Protect the packet in self->buffer[:length] with `protect` (srtp_protect for RTP,
 * srtp_protect_rtcp for RTCP) and send it; 0, or -1 with an exception. */
static int route_send_with(Route *self, srtp_call protect, int length) {
    int status = protect(self->session, self->buffer, &length);
    if (status != 0) {
        PyErr_Format(PyExc_RuntimeError, "srtp_protect failed (libsrtp status %d)", status);
        return -1;
    }
    if (length < 0 || length > BUFFER_SIZE) {
        PyErr_SetString(PyExc_RuntimeError, "srtp_protect returned an impossible length");
        return -1;
    }
    self->tx_packets++;
    self->tx_bytes += (unsigned long long)length;
    if (!self->backlog) {
        PyObject *fd_object = PyObject_CallMethodNoArgs(self->sock, fileno_name);
        if (fd_object == NULL)
            return -1;
        long fd = PyLong_AsLong(fd_object);
        Py_DECREF(fd_object);
        if (fd == -1 && PyErr_Occurred())
            return -1;
        if (fd >= 0) {
            ssize_t sent = sendto((int)fd, self->buffer, (size_t)length, MSG_DONTWAIT,
                                  (struct sockaddr *)&self->address, self->address_length);
            if (sent == length)
                return 0;
        }
        /* Full socket buffer, an ICMP error, a closed socket: asyncio knows what to do
         * (buffer it, report it, drop it); and until its buffer is empty, packets go
         * there too, to stay in order. */
        self->backlog = 1;
    }
    self->fallbacks++;
    PyObject *packet = PyBytes_FromStringAndSize((const char *)self->buffer, length);
    if (packet == NULL)
        return -1;
    PyObject *fallback = Py_NewRef(self->fallback);
    PyObject *result = PyObject_CallOneArg(fallback, packet);
    Py_DECREF(fallback);
    Py_DECREF(packet);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

static int route_send(Route *self, int length) {
    return route_send_with(self, self->protect, length);
}

static PyObject *Route_send_rtcp(Route *self, PyObject *packet) {
    if (!PyBytes_Check(packet)) {
        PyErr_SetString(PyExc_TypeError, "an RTCP packet must be bytes");
        return NULL;
    }
    if (self->protect_rtcp == NULL || self->session == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this Route has no protect_rtcp");
        return NULL;
    }
    if (!self->open) {
        PyErr_SetString(PyExc_ConnectionError, "the route is closed");
        return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(packet);
    if (size > BUFFER_SIZE - SRTCP_MAX_TRAILER) {
        PyErr_SetString(PyExc_ValueError, "packet is too long");
        return NULL;
    }
    memcpy(self->buffer, PyBytes_AS_STRING(packet), (size_t)size);
    if (route_send_with(self, self->protect_rtcp, (int)size) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Route_get_backlog(Route *self, void *unused) {
    return PyBool_FromLong(self->backlog);
}

static int Route_set_backlog(Route *self, PyObject *value, void *unused) {
    int flag = value == NULL ? 0 : PyObject_IsTrue(value);
    if (flag < 0)
        return -1;
    self->backlog = flag;
    return 0;
}

static PyObject *Route_get_open(Route *self, void *unused) {
    return PyBool_FromLong(self->open);
}

static PyMethodDef Route_methods[] = {
    {"close", (PyCFunction)Route_close, METH_NOARGS, "Send nothing more this way."},
    {"send_rtcp", (PyCFunction)Route_send_rtcp, METH_O,
     "Protect an RTCP compound (SRTCP) and send it this way, as RTP goes."},
    {NULL},
};

static PyMemberDef Route_members[] = {
    {"tx_packets", T_ULONGLONG, offsetof(Route, tx_packets), READONLY, NULL},
    {"tx_bytes", T_ULONGLONG, offsetof(Route, tx_bytes), READONLY, NULL},
    {"fallbacks", T_ULONGLONG, offsetof(Route, fallbacks), READONLY, NULL},
    {NULL},
};

static PyGetSetDef Route_getset[] = {
    {"backlog", (getter)Route_get_backlog, (setter)Route_set_backlog,
     "Packets go through asyncio (set after a failed sendto, cleared by the fallback)."},
    {"open", (getter)Route_get_open, NULL, "Whether packets may be sent this way."},
    {NULL},
};

static PyTypeObject RouteType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway.media._rtp.Route",
    .tp_basicsize = sizeof(Route),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A call's outbound SRTP: protect and sendto on the selected ICE pair.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Route_init,
    .tp_traverse = (traverseproc)Route_traverse,
    .tp_clear = (inquiry)Route_clear,
    .tp_dealloc = (destructor)Route_dealloc,
    .tp_methods = Route_methods,
    .tp_members = Route_members,
    .tp_getset = Route_getset,
};

/* --- Encoder: a libopus encoder state, encoding from any int16 buffer ------------------- */

/* Why here: through ctypes each frame the echo speaks cost a numpy copy into the
 * encoder's input array, a ctypes call (argument conversion for five arguments) and a
 * string_at; here one C call reads the caller's buffer as it is (any C-contiguous int16
 * exporter: an ndarray, array('h'), a memoryview) and the fused Outbound.send_pcm below
 * puts the packet straight into the RTP buffer. The encoder's settings (application,
 * bitrate, VBR, complexity) are made by gateway.media.opus through opus_encoder_ctl
 * before the state is handed in, so the packets are those of the ctypes path. */

/* opus_int32 opus_encode(OpusEncoder *, const opus_int16 *pcm, int frame_size,
 *                        unsigned char *data, opus_int32 max_data_bytes). */
typedef int32_t (*opus_encode_call)(void *encoder, const int16_t *pcm, int frame_size,
                                    uint8_t *data, int32_t max_data_bytes);
typedef void (*opus_destroy_call)(void *encoder);

/* RFC 6716 3.2.1: the largest 20 ms frame. Always offered whole to opus_encode, as the
 * ctypes path does: max_data_bytes enters libopus' bit allocation (SILK's maxBits), so a
 * smaller bound could change the packets. */
#define MAX_OPUS_PACKET 1276
/* 120 ms at 48 kHz: the most samples one opus_encode call takes. */
#define MAX_ENCODER_FRAME 5760

typedef struct {
    PyObject_HEAD
    opus_encode_call encode;
    opus_destroy_call destroy;
    void *state; /* owned: destroyed by close() or with the object; NULL once closed */
    int frame_samples;
    uint8_t packet[MAX_OPUS_PACKET];
    int16_t aligned[MAX_ENCODER_FRAME]; /* for a buffer that starts on an odd address */
} Encoder;

static void encoder_close(Encoder *self) {
    void *state = self->state;
    self->state = NULL;
    if (state != NULL && self->destroy != NULL)
        self->destroy(state);
}

static int Encoder_init(Encoder *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"encode", "destroy", "state", "frame_samples", NULL};
    PyObject *encode, *destroy, *state;
    int frame_samples;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOi", names, &encode, &destroy, &state,
                                     &frame_samples))
        return -1;
    if (frame_samples <= 0 || frame_samples > MAX_ENCODER_FRAME) {
        PyErr_SetString(PyExc_ValueError, "frame_samples out of range");
        return -1;
    }
    void *encode_function = as_pointer(encode, "encode"), *destroy_function = NULL,
         *pointer = NULL;
    if (encode_function == NULL || (destroy_function = as_pointer(destroy, "destroy")) == NULL ||
        (pointer = as_pointer(state, "state")) == NULL)
        return -1;
    encoder_close(self); /* __init__ called again: the old state is still ours */
    self->encode = (opus_encode_call)encode_function;
    self->destroy = (opus_destroy_call)destroy_function;
    self->state = pointer;
    self->frame_samples = frame_samples;
    return 0;
}

static void Encoder_dealloc(Encoder *self) {
    encoder_close(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Native int16 in struct syntax: "h", "=h", or "<h"/">h" by the machine's byte order
 * (gateway.media.pcm's _INT16_FORMATS, which the Python fallback checks). */
static int is_int16_format(const char *format) {
    if (format == NULL)
        return 0;
    if (format[0] == '=' || format[0] == (PY_LITTLE_ENDIAN ? '<' : '>'))
        format++;
    return format[0] == 'h' && format[1] == '\0';
}

/* Encode frame_samples int16 samples at data (checked by the caller; any alignment) into
 * self->packet; its length, or -1 with RuntimeError (libopus refused). */
static int32_t encoder_encode_samples(Encoder *self, const char *data) {
    const int16_t *samples = (const int16_t *)data;
    if ((uintptr_t)data % _Alignof(int16_t) != 0) {
        memcpy(self->aligned, data, (size_t)self->frame_samples * 2);
        samples = self->aligned;
    }
    int32_t size =
        self->encode(self->state, samples, self->frame_samples, self->packet, MAX_OPUS_PACKET);
    if (size <= 0) {
        PyErr_Format(PyExc_RuntimeError, "libopus encode failed (%d)", (int)size);
        return -1;
    }
    return size;
}

/* Encode one frame of pcm (any buffer) into self->packet; its length, or -1 with
 * ValueError (closed, not a C-contiguous 1-D int16 buffer of frame_samples) or
 * RuntimeError (libopus refused). */
static int32_t encoder_encode(Encoder *self, PyObject *pcm) {
    if (self->state == NULL) {
        PyErr_SetString(PyExc_ValueError, "the encoder is closed");
        return -1;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(pcm, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        /* Not a buffer, or a strided one: the caller passed the wrong thing, like a
         * wrong length. */
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError,
                     "expected %d int16 samples in a C-contiguous buffer, got %.100s",
                     self->frame_samples, Py_TYPE(pcm)->tp_name);
        return -1;
    }
    if (view.ndim != 1 || !is_int16_format(view.format) ||
        view.len != (Py_ssize_t)self->frame_samples * 2) {
        PyErr_Format(PyExc_ValueError, "expected %d int16 samples, got %zd bytes of format %s",
                     self->frame_samples, view.len, view.format ? view.format : "?");
        PyBuffer_Release(&view);
        return -1;
    }
    int32_t size = encoder_encode_samples(self, (const char *)view.buf);
    PyBuffer_Release(&view);
    return size;
}

static PyObject *Encoder_encode(Encoder *self, PyObject *pcm) {
    int32_t size = encoder_encode(self, pcm);
    if (size < 0)
        return NULL;
    return PyBytes_FromStringAndSize((const char *)self->packet, size);
}

static PyObject *Encoder_close(Encoder *self, PyObject *unused) {
    encoder_close(self);
    Py_RETURN_NONE;
}

static PyObject *Encoder_get_closed(Encoder *self, void *unused) {
    return PyBool_FromLong(self->state == NULL);
}

static PyMethodDef Encoder_methods[] = {
    {"encode", (PyCFunction)Encoder_encode, METH_O,
     "encode(pcm) -> one Opus packet from exactly frame_samples int16 samples."},
    {"close", (PyCFunction)Encoder_close, METH_NOARGS,
     "Destroy the libopus state now (encoding afterwards raises ValueError)."},
    {NULL},
};

static PyGetSetDef Encoder_getset[] = {
    {"closed", (getter)Encoder_get_closed, NULL, "Whether the state was destroyed."},
    {NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gateway.media._rtp.Encoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Encoder(encode, destroy, state, frame_samples): owns a configured libopus "
              "encoder state.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Encoder_init,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_methods = Encoder_methods,
    .tp_getset = Encoder_getset,
};

/* --- PlayoutState: a PlayoutTrack's clock, and the frames its sender may send alone -------
 *
 * gateway.media.playout's PlayoutTrack keeps its pacing here (pts 0's loop time, the next
 * frame's pts, the late/skipped counters, max_burst, whether it is behind), so its Python
 * poll() and Outbound.send_due below step one and the same clock. The track also "arms"
 * the state with what the next frames are when they need no Python: silence (nothing
 * queued, no on_frame_sent callback), or the middle frames of the utterance at the head
 * of the queue (PCM or pre-encoded packets; not paused, no tap, no callback). The first
 * frame of an utterance (the encoder may have to be made), its last (padding, the
 * playback's end) and everything else unusual stay in Python: the state is disarmed, or
 * the cursor reaches the armed end, and send_due says so before touching anything.
 * Per call per 20 ms tick that takes poll(), its tuple and the speech bookkeeping out of
 * the interpreter (measured in docs/performance.md). */

enum { FAST_NONE, FAST_SILENCE, FAST_PCM, FAST_PACKETS };

typedef struct {
    PyObject_HEAD
    /* The pacing: the same arithmetic, in the same double order, as the Python it replaced
     * (see PlayoutTrack.poll), so the same loop times give the same frames. */
    double start; /* loop time of pts 0, once started */
    char started, behind;
    long long pts, next_pts;
    long long frames_sent, speech_frames, late_frames, skipped_frames;
    int max_burst, frame_ticks;
    double frame_seconds, early;
    /* What send_due may send without Python, set by arm_* (PlayoutTrack._arm). */
    int fast;
    PyObject *payload;  /* FAST_SILENCE: the silence packet */
    PyObject *encoder;  /* FAST_PCM: the track's Encoder */
    PyObject *source;   /* FAST_PCM: the utterance's int16 buffer; FAST_PACKETS: its packets */
    PyObject *item;     /* the queue entry, whose next_index is written back per frame */
    PyObject *playback; /* its Playback, whose frames_sent is written back per frame */
    long long index, end; /* frames index..end-1 of the item go without Python */
} PlayoutState;

static PyObject *next_index_name, *frames_sent_name;

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

/* How late the next frame is at now (negative: early). */
static double state_late(const PlayoutState *self, double now) {
    return now - (self->start + (double)self->next_pts / OPUS_RATE);
}

/* The pacing step of a frame due at now (the caller checked it is): its pts. Late and
 * skipped frames counted, the next pts set, behind said, the frame counted as sent. */
static long long state_step(PlayoutState *self, double now) {
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

static PyTypeObject PlayoutStateType = {
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

/* --- Outbound: a sender's RTP stream ---------------------------------------------------- */

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

static PyObject *route_name;

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

static void count_sent(Outbound *self, Py_ssize_t payload_length, uint32_t timestamp) {
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
        if (length < 0 || route_send(r, (int)length) < 0) {
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

static PyObject *native_encoder_name;

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
 * new reference in *owned): 1, or 0 if it is not one send_due takes (Python's path will),
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

static PyTypeObject OutboundType = {
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

/* --- module ----------------------------------------------------------------------------- */

/* parse(rtp) -> (payload_type, marker, sequence_number, timestamp, ssrc, start, end) or
 * None: the parser, exposed for tests (compared with parse_inbound under hypothesis). */
static PyObject *module_parse(PyObject *module, PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    rtp_header h;
    int status = parse_rtp((const uint8_t *)view.buf, view.len, &h);
    PyBuffer_Release(&view);
    if (status < 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(iiIkknn)", h.payload_type, h.marker, (unsigned int)h.sequence_number,
                         (unsigned long)h.timestamp, (unsigned long)h.ssrc, h.start, h.end);
}

static PyObject *module_opus_duration(PyObject *module, PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int duration = opus_duration((const uint8_t *)view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromLong(duration);
}

static PyMethodDef module_methods[] = {
    {"parse", module_parse, METH_O, "The RTP header parser (tests)."},
    {"opus_duration", module_opus_duration, METH_O, "An Opus packet's 48 kHz samples, or -1."},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "gateway.media._rtp",
    "The per-packet RTP path in C (see gateway/media/native.py).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__rtp(void) {
    enabled_name = PyUnicode_InternFromString("_enabled");
    fileno_name = PyUnicode_InternFromString("fileno");
    route_name = PyUnicode_InternFromString("_native_route");
    native_encoder_name = PyUnicode_InternFromString("_native_encoder");
    next_index_name = PyUnicode_InternFromString("next_index");
    frames_sent_name = PyUnicode_InternFromString("frames_sent");
    if (enabled_name == NULL || fileno_name == NULL || route_name == NULL ||
        native_encoder_name == NULL || next_index_name == NULL || frames_sent_name == NULL)
        return NULL;
    PyTypeObject *types[] = {&InboundType, &PortType, &ReaderType,
                             &RouteType,   &EncoderType, &PlayoutStateType, &OutboundType};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        if (PyType_Ready(types[i]) < 0)
            return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddIntConstant(module, "BUFFER_SIZE", BUFFER_SIZE) < 0 ||
        PyModule_AddObjectRef(module, "Inbound", (PyObject *)&InboundType) < 0 ||
        PyModule_AddObjectRef(module, "Port", (PyObject *)&PortType) < 0 ||
        PyModule_AddObjectRef(module, "Reader", (PyObject *)&ReaderType) < 0 ||
        PyModule_AddIntConstant(module, "READ_BATCH", READ_BATCH) < 0 ||
        PyModule_AddObjectRef(module, "Route", (PyObject *)&RouteType) < 0 ||
        PyModule_AddObjectRef(module, "Encoder", (PyObject *)&EncoderType) < 0 ||
        PyModule_AddObjectRef(module, "PlayoutState", (PyObject *)&PlayoutStateType) < 0 ||
        PyModule_AddObjectRef(module, "Outbound", (PyObject *)&OutboundType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
