"""LAN-party pieces of the node: broadcast and multicast classification, IGMP membership,
fan-out with a rate limit, names (DNS) and the access-rule filter.

The cores here are sans-IO; `dnsserver` and `resolved` are the shells. `docs/lan-party.md`
says which parts the node's data path calls today.
"""
