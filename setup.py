"""The C parts: the media path (gateway/media/csrc/) and the VAD step (gateway/pipeline/_vadstep.c).

Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

# The media path's C files, one per concept (_rtp.h, their shared header, says which holds what).
RTP_SOURCES = [
    f"gateway/media/csrc/{name}.c"
    for name in (
        "module",
        "rtp",
        "inbound",
        "reader",
        "tickread",
        "route",
        "encoder",
        "playout",
        "outbound",
    )
]

EXTENSIONS = [
    Extension(
        "gateway.media._rtp",
        RTP_SOURCES,
        depends=["gateway/media/csrc/_rtp.h"],  # a changed header rebuilds every file
        extra_compile_args=[
            "-O2",
            "-Wall",
            "-Wextra",
            "-Wno-unused-parameter",
            "-Wno-missing-field-initializers",  # CPython's own tables end with {NULL}
        ],
    ),
    Extension(
        "gateway.pipeline._vadstep",
        ["gateway/pipeline/_vadstep.c"],
        # No fused multiply-add: the gate's doubles must round as Python's floats do.
        extra_compile_args=[
            "-O2",
            "-Wall",
            "-Wextra",
            "-Wno-missing-field-initializers",
            "-ffp-contract=off",
        ],
    ),
]

if __name__ == "__main__":  # not when benchmarks/cpu_ab.py reads EXTENSIONS
    setup(ext_modules=EXTENSIONS)
