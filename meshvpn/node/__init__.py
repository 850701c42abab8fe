"""The node daemon: per-peer path selection, peers, data plane and the asyncio shell."""
