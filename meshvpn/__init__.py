"""meshvpn: a mesh VPN with a sans-IO protocol core and thin asyncio shells."""

__version__ = "0.1.0"
