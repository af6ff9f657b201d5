/* A call's socket, read: Port is one ICE socket's datagram_received (asyncio calls it, or
 * Reader does): SRTP and SRTCP (RFC 7983's first byte, RFC 5761's second) go to the call's
 * Inbound, anything else (STUN, DTLS) to aioice's own datagram_received. Reader reads the
 * sockets of an event loop's calls at the frame clock's tick, in batches (recvmmsg), each
 * datagram through its socket's Port, with the kernel's arrival time (SO_TIMESTAMPNS).
 *
 * Why C: an asyncio reader wakes the process for each datagram (70-250 us of CPU a wake-up
 * on this VM) and runs Python per datagram; here a socket's datagrams are drained at the tick
 * the process is awake for anyway, in one C call per socket.
 */
#include "_rtp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>

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

PyTypeObject PortType = {
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

struct Reader {
    PyObject_HEAD
    read_batch *batch;
    uint8_t *slots;          /* READ_BATCH * SLOT_SIZE */
    PyObject *on_error;      /* on_error(exc): a datagram's handler raised */
    int busy;
    unsigned long long datagrams, drains, kernel_times;
    double waited; /* seconds from the kernel's arrival stamps to the reads, summed */
};

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

/* The exception set now, normalized with its traceback (cleared): a new reference, or NULL
 * if none was set. */
PyObject *raised_exception(void) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (value != NULL && traceback != NULL)
        PyException_SetTraceback(value, traceback);
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    return value;
}

/* The exception set now goes to on_error (or, if that fails too, to sys.unraisablehook):
 * one datagram's failure must not stop the rest of the tick. */
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

/* Read what sock holds, up to limit datagrams, without blocking, each through port as
 * asyncio would hand it over; a socket error goes to error_received(OSError) as asyncio's
 * _read_ready does. The number read (errors count as one), -1 if the socket is closed, or
 * -2 with an exception (the caller's arguments were wrong, or sock has no fileno()). */
long reader_drain(Reader *self, PyObject *port_object, PyObject *sock, PyObject *error_received,
                  long limit) {
    Port *port = (Port *)port_object;
    if (port->inbound == NULL || port->other == NULL || self->batch == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Port or Reader is not initialized");
        return -2;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Reader.drain is not reentrant");
        return -2;
    }
    PyObject *fd_object = PyObject_CallMethodNoArgs(sock, fileno_name);
    if (fd_object == NULL)
        return -2;
    long fd = PyLong_AsLong(fd_object);
    Py_DECREF(fd_object);
    if (fd == -1 && PyErr_Occurred())
        return -2;
    if (fd < 0)
        return -1;
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
    return read;
}

/* drain(port, sock, error_received, limit): reader_drain's count, -1 if sock is closed. */
static PyObject *Reader_drain(Reader *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyObject_TypeCheck(args[0], &PortType)) {
        PyErr_SetString(PyExc_TypeError, "drain(port: Port, sock, error_received, limit: int)");
        return NULL;
    }
    long limit = PyLong_AsLong(args[3]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    long read = reader_drain(self, args[0], args[1], args[2], limit);
    return read < -1 ? NULL : PyLong_FromLong(read);
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
    {"drain_each", (PyCFunction)(void (*)(void))Reader_drain_each, METH_FASTCALL,
     "drain_each(entries, start, deadline, time, limit, failed): drain() each entry's socket "
     "in turn from start until time() passes deadline; how many were read (tickread.c)."},
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

PyTypeObject ReaderType = {
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
