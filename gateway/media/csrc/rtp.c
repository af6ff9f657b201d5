/* The RTP wire format as the inbound path reads it: the RTP header (RFC 3550 5.1), the
 * Opus TOC byte's duration (RFC 6716 3.1), and the reception statistics an RTCP receiver
 * report needs (aiortc's StreamStatistics, RFC 3550 A.3 and A.8).
 *
 * Why C: every datagram of every call goes through the parser and the statistics (from
 * inbound.c); in Python they were a good part of the interpreter's per-packet work. The
 * module's parse() and opus_duration() expose them to the tests, which compare them with
 * the Python they replace (gateway.media.transport.parse_inbound, gateway.media.opus).
 */
#include "_rtp.h"

static uint32_t read32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* What gateway.media.transport.parse_inbound accepts, with the same arithmetic:
 * CSRCs, the extension and padding are skipped by the lengths they claim, and
 * a claim that runs past the packet makes it malformed (-1). */
int parse_rtp(const uint8_t *data, Py_ssize_t length, rtp_header *h) {
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
int opus_duration(const uint8_t *payload, Py_ssize_t length) {
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

static int uint16_gt(uint16_t a, uint16_t b) {
    return (a < b && b - a > 0x8000) || (a > b && a - b < 0x8000);
}

void stats_add(stream_stats *s, uint16_t seq, uint32_t timestamp, double now) {
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

/* --- the module's functions (tests) -------------------------------------------------- */

/* parse(rtp) -> (payload_type, marker, sequence_number, timestamp, ssrc, start, end) or
 * None: the parser, exposed for tests (compared with parse_inbound under hypothesis). */
PyObject *module_parse(PyObject *module, PyObject *data) {
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

PyObject *module_opus_duration(PyObject *module, PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int duration = opus_duration((const uint8_t *)view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromLong(duration);
}
