"""TCP hole punching: `core.py` (campaigns, secured connections, paths; sans-IO) and `shell.py` (the punch port, asyncio)."""
