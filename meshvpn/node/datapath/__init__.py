"""The data path: TUN packets to sealed GSO runs and GRO batches back, and the buffers it works in.

Sans-IO cores: `dataplane.py` (the per-packet loop), `fastpath.py` (its batch loops, native or pure
Python), `offload.py` (virtio-net headers, segmentation, coalescing). Shells: `tun.py` (the TUN
device); the batched UDP socket is `meshvpn/udpbatch.py`, which the relay shares; the loops that
drive them are in `node/daemon.py`.
"""
