/* The internal header of the _rtp extension (the C files beside it; gateway/media/native.py
 * says how Python uses it): what more than one of its files shares.
 *
 * One file per concept: module.c (the module: its types registered, its interned names),
 * rtp.c (the RTP header, the Opus TOC, reception statistics), inbound.c (Inbound: one call per
 * SRTP datagram), reader.c (Port and Reader: a socket's datagrams, at the frame clock's tick),
 * tickread.c (Reader.drain_each: every socket of a tick in one call),
 * route.c (Route: protect and sendto), encoder.c (Encoder: libopus encoding), playout.c
 * (PlayoutState: the sender's clock) and outbound.c (Outbound: a sender's RTP stream).
 *
 * Why C at all: after the previous round, each 20 ms frame still went through ~30
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
 *
 * Everything declared here is hidden (not exported from the shared object: only
 * PyInit__rtp is), so calls between the files are direct calls, as within one file.
 * The few small helpers a per-packet path uses from another file are static inline; this
 * header calls nothing the C files define, so the files' calls run one way.
 */
#ifndef GATEWAY_MEDIA_CSRC_RTP_H
#define GATEWAY_MEDIA_CSRC_RTP_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#pragma GCC visibility push(hidden)

/* pylibsrtp's own buffer size; a datagram longer than this is not SRTP we sent or accept. */
#define BUFFER_SIZE 1500
/* libsrtp's SRTP_MAX_TRAILER_LEN: protect() may grow a packet by this much. */
#define SRTP_MAX_TRAILER 144
/* libsrtp's SRTP_MAX_SRTCP_TRAILER_LEN: the same for protect_rtcp() (the SRTCP index too). */
#define SRTCP_MAX_TRAILER 148
#define RTP_HEADER 12
#define OPUS_RATE 48000
#define NTP_UNIX_OFFSET 2208988800.0
/* Datagrams asked of the kernel per recvmmsg; a socket's tick reads at most `limit`. */
#define READ_BATCH 16
/* RFC 6716 3.2.1: the largest 20 ms frame. Always offered whole to opus_encode, as the
 * ctypes path does: max_data_bytes enters libopus' bit allocation (SILK's maxBits), so a
 * smaller bound could change the packets. */
#define MAX_OPUS_PACKET 1276
/* 120 ms at 48 kHz: the most samples one opus_encode call takes. */
#define MAX_ENCODER_FRAME 5760

/* libsrtp 2: srtp_err_status_t srtp_protect(srtp_t, void *rtp_hdr, int *len_ptr). */
typedef int (*srtp_call)(void *session, void *packet, int *length);
typedef int (*opus_decode_call)(void *decoder, const unsigned char *data, int32_t length,
                                int16_t *pcm, int frame_size, int decode_fec);
/* opus_int32 opus_encode(OpusEncoder *, const opus_int16 *pcm, int frame_size,
 *                        unsigned char *data, opus_int32 max_data_bytes). */
typedef int32_t (*opus_encode_call)(void *encoder, const int16_t *pcm, int frame_size,
                                    uint8_t *data, int32_t max_data_bytes);
typedef void (*opus_destroy_call)(void *encoder);

/* --- small helpers ------------------------------------------------------------------- */

static inline double wall_clock(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

/* Pointers come in from Python as ints: refuse NULL, which ctypes/cffi give for "none". */
static inline void *as_pointer(PyObject *value, const char *what) {
    void *pointer = PyLong_AsVoidPtr(value);
    if (pointer == NULL && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "%s is a NULL pointer", what);
    return pointer;
}

/* Native int16 in struct syntax: "h", "=h", or "<h"/">h" by the machine's byte order
 * (gateway.media.pcm's _INT16_FORMATS, which the Python fallback checks). */
static inline int is_int16_format(const char *format) {
    if (format == NULL)
        return 0;
    if (format[0] == '=' || format[0] == (PY_LITTLE_ENDIAN ? '<' : '>'))
        format++;
    return format[0] == 'h' && format[1] == '\0';
}

/* Interned attribute names (made by module.c). */
extern PyObject *enabled_name, *fileno_name, *route_name, *native_encoder_name,
    *next_index_name, *frames_sent_name;

/* --- rtp.c: the RTP header, the Opus TOC, reception statistics ------------------------ */

typedef struct {
    int payload_type, marker;
    uint16_t sequence_number;
    uint32_t timestamp, ssrc;
    Py_ssize_t start, end; /* the payload: data[start:end] */
} rtp_header;

typedef struct {
    int has_seq;
    uint16_t base_seq, max_seq;
    long long cycles, received, jitter_q4, last_arrival;
    uint32_t last_timestamp;
} stream_stats;

int parse_rtp(const uint8_t *data, Py_ssize_t length, rtp_header *h);
int opus_duration(const uint8_t *payload, Py_ssize_t length);
void stats_add(stream_stats *s, uint16_t seq, uint32_t timestamp, double now);
/* The module's functions parse(rtp) and opus_duration(payload) (tests). */
PyObject *module_parse(PyObject *module, PyObject *data);
PyObject *module_opus_duration(PyObject *module, PyObject *data);

/* --- inbound.c: Inbound, one call per SRTP datagram ------------------------------------ */

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

extern PyTypeObject InboundType;
/* One SRTP (or SRTCP) datagram that arrived at `now`: 0, or -1 with an exception. */
int inbound_take(Inbound *self, const uint8_t *data, Py_ssize_t size, double now);
int inbound_take_rtcp(Inbound *self, const uint8_t *data, Py_ssize_t size);

/* --- reader.c: Port (a socket's datagram_received) and Reader (recvmmsg at the tick) ---- */

extern PyTypeObject PortType, ReaderType;
typedef struct Reader Reader;
/* Read a socket's datagrams through its Port (a PortType object): how many, -1 if the
 * socket is closed, -2 with an exception. */
long reader_drain(Reader *self, PyObject *port, PyObject *sock, PyObject *error_received,
                  long limit);
/* The exception set now, normalized with its traceback (cleared), or NULL if none. */
PyObject *raised_exception(void);

/* --- tickread.c: Reader.drain_each, a tick's sockets in one call ---------------------- */

PyObject *Reader_drain_each(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

/* --- route.c: Route, where protected RTP goes ----------------------------------------- */

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

extern PyTypeObject RouteType;
/* Protect self->buffer[:length] with `protect` (srtp_protect for RTP, srtp_protect_rtcp for
 * RTCP) and send it; 0, or -1 with an exception. */
int route_send_with(Route *self, srtp_call protect, int length);

/* --- encoder.c: Encoder, a libopus encoder state ------------------------------------- */

typedef struct {
    PyObject_HEAD
    opus_encode_call encode;
    opus_destroy_call destroy;
    void *state; /* owned: destroyed by close() or with the object; NULL once closed */
    int frame_samples;
    uint8_t packet[MAX_OPUS_PACKET];
    int16_t aligned[MAX_ENCODER_FRAME]; /* for a buffer that starts on an odd address */
} Encoder;

extern PyTypeObject EncoderType;
int32_t encoder_encode_samples(Encoder *self, const char *data);
int32_t encoder_encode(Encoder *self, PyObject *pcm);

/* --- playout.c: PlayoutState, a PlayoutTrack's clock ---------------------------------- */

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

extern PyTypeObject PlayoutStateType;

/* How late the next frame is at now (negative: early). */
static inline double state_late(const PlayoutState *self, double now) {
    return now - (self->start + (double)self->next_pts / OPUS_RATE);
}

long long state_step(PlayoutState *self, double now);

/* --- outbound.c: Outbound, a sender's RTP stream -------------------------------------- */

extern PyTypeObject OutboundType;

#pragma GCC visibility pop

#endif
