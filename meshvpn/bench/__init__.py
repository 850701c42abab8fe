"""Every benchmark: `make bench`, meshvpn's throughput, latency and time to a direct path beside other VPNs.

All rows run in one invocation on the same pair of network namespaces, one row at a time, so
their figures are comparable. `peers` owns the network and the rows, `measure` the iperf3 and
ping runs, `report` the table and JSON; `python -m meshvpn.bench --help` lists the options.
Beside it: `matrix` (the NAT traversal matrix, `make matrix`), `forward` (the minimal TUN <-> UDP
forwarder pair, the data path's yardstick), `crypto` (per-packet crypto and handshakes),
`receive` (the receive path per packet, in process), `relay_hellos` (what a junk relay hello
costs the relay) and `coord_scale` (N simulated nodes against one coordination server); each
runs with `python -m meshvpn.bench.NAME --help`.
"""
