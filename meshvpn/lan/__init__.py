"""LAN-party pieces of the node: broadcast and multicast classification, IGMP membership,
fan-out with a rate limit, names (DNS) and the access-rule filter.

The cores here are sans-IO; `dnsserver` and `resolved` are the shells. The node composes them in
`meshvpn.node.lanparty`; `docs/lan-party.md` says how its data path calls them.
"""
