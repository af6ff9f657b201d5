/* Encoder: a libopus encoder state, encoding from any int16 buffer.
 *
 * Why C: through ctypes each frame the echo speaks cost a numpy copy into the
 * encoder's input array, a ctypes call (argument conversion for five arguments) and a
 * string_at; here one C call reads the caller's buffer as it is (any C-contiguous int16
 * exporter: an ndarray, array('h'), a memoryview) and the fused Outbound.send_pcm
 * (outbound.c) puts the packet straight into the RTP buffer. The encoder's settings
 * (application, bitrate, VBR, complexity) are made by gateway.media.opus through
 * opus_encoder_ctl before the state is handed in, so the packets are those of the ctypes path.
 */
#include "_rtp.h"

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

/* Encode frame_samples int16 samples at data (checked by the caller; any alignment) into
 * self->packet; its length, or -1 with RuntimeError (libopus refused). */
int32_t encoder_encode_samples(Encoder *self, const char *data) {
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
int32_t encoder_encode(Encoder *self, PyObject *pcm) {
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

PyTypeObject EncoderType = {
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
