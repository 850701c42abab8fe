"""meshvpn relays as the node sees them: `core.py` (the relay set and home), `link.py` (one relay: hellos,
UDP then TCP), both sans-IO; `shell.py` (the TCP streams to relays, asyncio)."""
