"""The relay: forwards end-to-end encrypted messages between nodes that cannot reach each other.

`core` is the sans-IO forwarding logic; `server` is the asyncio shell (UDP and TCP on one port).
"""
