/* Reader.drain_each: every socket registered for a tick read in one call, in turn, until
 * the reading's time is up (gateway/media/tickread.py's TickReader, which keeps the
 * registrations and decides what the time is).
 *
 * Why C: the tick read each call's socket through a Python step of its own (the clock
 * read, the transport's is_closing(), the drain() call and its bound error handler),
 * per call every 20 ms; here that loop runs once per tick in C, and Python runs only for
 * a socket that is closing or failed (the caller unregisters it) and for a time() given
 * in Python (the tests' clocks).
 *
 * Each entry is a tuple (protocol, port, sock, transport, error_received), as TickReader
 * keeps them: entry k of the turn is entries[(start + k) % len(entries)]. Before each
 * socket the time is read (CLOCK_MONOTONIC, which asyncio's loop.time() reads, or
 * time() when given) and the turn stops once it is past `deadline` (not looked at when
 * `deadline` is infinite). A socket whose transport is closing, that is closed, or whose
 * read raised is appended to `failed` as (protocol, exception or None), and the turn goes
 * on: one socket's failure never stops the others' reads.
 */
#include "_rtp.h"

#include <math.h>

static PyObject *is_closing_name;

/* time.monotonic() as Python computes it: nanoseconds to a double of seconds. */
static double monotonic_seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long ns = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
    return (double)ns / 1e9;
}

/* The reading's time now: time() if given, else the monotonic clock; -1 with an exception. */
static int read_time(PyObject *time, double *now) {
    if (time == Py_None) {
        *now = monotonic_seconds();
        return 0;
    }
    PyObject *value = PyObject_CallNoArgs(time);
    if (value == NULL)
        return -1;
    *now = PyFloat_AsDouble(value);
    Py_DECREF(value);
    return *now == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* failed.append((protocol, exc or None)); exc is the exception set now, if any. */
static int note_failed(PyObject *failed, PyObject *protocol, int raised) {
    PyObject *exc = raised ? raised_exception() : NULL;
    if (exc == NULL)
        exc = Py_NewRef(Py_None);
    PyObject *item = PyTuple_Pack(2, protocol, exc);
    Py_DECREF(exc);
    if (item == NULL)
        return -1;
    int result = PyList_Append(failed, item);
    Py_DECREF(item);
    return result;
}

/* One entry's socket: 0 (read, or noted in failed), -1 with an exception (failed itself). */
static int drain_entry(PyObject *reader, PyObject *entry, long limit, PyObject *failed) {
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 5 ||
        !PyObject_TypeCheck(PyTuple_GET_ITEM(entry, 1), &PortType)) {
        PyErr_SetString(PyExc_TypeError,
                        "an entry is (protocol, port: Port, sock, transport, error_received)");
        return -1;
    }
    PyObject *protocol = PyTuple_GET_ITEM(entry, 0), *port = PyTuple_GET_ITEM(entry, 1),
             *sock = PyTuple_GET_ITEM(entry, 2), *transport = PyTuple_GET_ITEM(entry, 3),
             *error_received = PyTuple_GET_ITEM(entry, 4);
    PyObject *closing = PyObject_CallMethodNoArgs(transport, is_closing_name);
    if (closing == NULL)
        return note_failed(failed, protocol, 1);
    int is_closing = PyObject_IsTrue(closing);
    Py_DECREF(closing);
    if (is_closing < 0)
        return note_failed(failed, protocol, 1);
    if (is_closing)
        return note_failed(failed, protocol, 0);
    long read = reader_drain((Reader *)reader, port, sock, error_received, limit);
    if (read < 0)
        return note_failed(failed, protocol, read < -1);
    return 0;
}

/* drain_each(entries: list, start: int, deadline: float, time: callable | None,
 *            limit: int, failed: list) -> int: how many entries were read (from start, in
 * turn); fewer than len(entries) if the time passed deadline first. */
PyObject *Reader_drain_each(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyList_Check(args[0]) || !PyList_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "drain_each(entries: list, start: int, deadline: float, "
                                         "time: callable | None, limit: int, failed: list)");
        return NULL;
    }
    if (is_closing_name == NULL &&
        (is_closing_name = PyUnicode_InternFromString("is_closing")) == NULL)
        return NULL;
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    double deadline = PyFloat_AsDouble(args[2]);
    if (deadline == -1.0 && PyErr_Occurred())
        return NULL;
    long limit = PyLong_AsLong(args[4]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    PyObject *time = args[3], *failed = args[5];
    /* A copy: the handlers may unregister calls (TickReader rebuilds its list then). */
    PyObject *entries = PyList_GetSlice(args[0], 0, PyList_GET_SIZE(args[0]));
    if (entries == NULL)
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(entries), read = 0;
    if (count > 0 && (start < 0 || start >= count)) {
        Py_DECREF(entries);
        PyErr_SetString(PyExc_ValueError, "start must be an index of entries");
        return NULL;
    }
    int timed = !isinf(deadline);
    for (; read < count; read++) {
        if (timed) {
            double now;
            if (read_time(time, &now) < 0)
                goto error;
            if (now > deadline)
                break;
        }
        if (drain_entry(self, PyList_GET_ITEM(entries, (start + read) % count), limit, failed) < 0)
            goto error;
    }
    Py_DECREF(entries);
    return PyLong_FromSsize_t(read);
error:
    Py_DECREF(entries);
    return NULL;
}
