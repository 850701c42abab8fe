"""The node: one sans-IO `Node` (node.py) that decides, and the daemon (daemon.py) that moves bytes.

Sub-packages by concern, each with its sans-IO `core` and, where it owns descriptors, its asyncio
`shell`: `relay/`, `turn/`, `tcp/`, and `datapath/` (the hot loop and its devices).
docs/architecture.md maps every module.
"""
