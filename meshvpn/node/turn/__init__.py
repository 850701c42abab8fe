"""TURN (RFC 8656) relays for the node: `core.py`, the allocations, channels and routes (sans-IO).

It has no shell of its own: its datagrams leave from the main socket through the node's outputs.
"""
