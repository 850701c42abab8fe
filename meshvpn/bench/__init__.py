"""`make bench`: meshvpn's throughput, latency and time to a direct path beside other VPNs.

All rows run in one invocation on the same pair of network namespaces, one row at a time, so
their figures are comparable. `peers` owns the network and the rows, `measure` the iperf3 and
ping runs, `report` the table and JSON; `python -m meshvpn.bench --help` lists the options.
"""
