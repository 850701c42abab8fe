"""Build wiring for the optional native data path (``meshvpn._fastpath``, linked to libsodium).

The extension is optional: without a compiler or ``libsodium-dev`` the build skips it and
``meshvpn.node.datapath.fastpath`` uses the pure-Python code.  Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "meshvpn._fastpath",
            ["meshvpn/_fastpath.c", "meshvpn/_fastpath_coalesce.c", "meshvpn/_fastpath_window.c",
             "meshvpn/_fastpath_loop.c", "meshvpn/_fastpath_recv.c", "meshvpn/_fastpath_send.c", "meshvpn/_fastpath_hold.c",
             "meshvpn/_fastpath_threads.c", "meshvpn/_fastpath_bucket.c", "meshvpn/_fastpath_relay.c", "meshvpn/_fastpath_forward.c",
             "meshvpn/_fastpath_wait.c", "meshvpn/_fastpath_flows.c", "meshvpn/_fastpath_table.c",
             "meshvpn/_fastpath_pins.c", "meshvpn/_fastpath_fanout.c"],
            depends=["meshvpn/_fastpath.h", "meshvpn/_fastpath_loop.h", "meshvpn/_fastpath_forward.h"],
            libraries=["sodium"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
