"""Router port mapping: UPnP IGD, NAT-PMP (RFC 6886) and PCP (RFC 6887) for the node's UDP port.

`natpmp` and `pcp` are the two wire formats, `core` the sans-IO machine that probes, maps,
renews and deletes, `shell` the asyncio side (the gateway socket and miniupnpc in a thread).
"""
