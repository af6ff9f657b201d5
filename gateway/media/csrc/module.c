/* The _rtp extension module: its functions and types registered, and the attribute names
 * the other files look up per packet, interned once here. What each type does is in its
 * own file (see _rtp.h); this one only puts them together as gateway.media._rtp.
 */
#include "_rtp.h"

PyObject *enabled_name, *fileno_name, *route_name, *native_encoder_name, *next_index_name,
    *frames_sent_name;

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
