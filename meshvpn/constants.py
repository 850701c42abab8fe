"""Protocol constants that both ends must agree on (WireGuard's values).

Implementation knobs (buffer sizes, queue lengths, defaults a config may
override) live next to the code that uses them; only values that define the
protocol's security and timing behaviour belong here.
"""

REKEY_AFTER_MESSAGES = 2**60
"""After this many messages sent with one session, the initiator starts a new handshake."""

REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
"""No session sends or accepts a counter at or beyond this value (nonces never wrap)."""

REKEY_AFTER_TIME = 120.0
"""Seconds after which the session's initiator starts a new handshake."""

REJECT_AFTER_TIME = 180.0
"""Seconds after which a session neither sends nor receives."""

REKEY_ATTEMPT_TIME = 90.0
"""Seconds during which a peer keeps retrying a handshake before giving up."""

REKEY_TIMEOUT = 5.0
"""Seconds to wait for a handshake response before sending a new initiation."""

KEEPALIVE_TIMEOUT = 10.0
"""Seconds without sending after a receive before a keepalive is sent."""

REPLAY_WINDOW_BITS = 8192
"""Size of the replay bitmap; the usable window is one 64-bit block smaller."""
