/* Route: where a call's protected RTP goes (the selected ICE pair's socket and remote
 * address). It protects the packet in place with libsrtp (SRTP, or SRTCP for send_rtcp)
 * and sends it with sendto; a full socket buffer or an error hands the packet, and every
 * one after it until asyncio's buffer is empty, to asyncio's transport (the fallback), so
 * packets stay in order.
 *
 * Why C: Outbound builds each frame's RTP packet straight into this buffer; protecting and
 * sending it here takes the SRTP call, a bytes object and asyncio's sendto out of every
 * 20 ms frame of every call.
 */
#include "_rtp.h"

#include <arpa/inet.h>

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
int route_send_with(Route *self, srtp_call protect, int length) {
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

PyTypeObject RouteType = {
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
