"""Coordination server: knows every node's keys, addresses and endpoints, and introduces peers.

`messages` is the control-plane schema, `membership` the sans-IO core, `store` its persistence,
`authkeys` and `addressing` the rules for admitting and naming nodes. See docs/coordination.md.
"""
