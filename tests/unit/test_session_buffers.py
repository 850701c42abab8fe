"""Session.seal_into/open_into: the buffer forms of seal/open, on both AEAD back ends."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshvpn import session as session_module
from meshvpn.errors import LocalProtocolError
from meshvpn.noise import SessionKeys
from meshvpn.session import BACKENDS, OVERHEAD, KeyRing, Session

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
PEER = b"P" * 32


def pair(backend_a: str, backend_b: str) -> tuple[Session, Session]:
    a = Session(SessionKeys(KEY_A, KEY_B, 1, 2, PEER, True), 0.0, backend_a)
    b = Session(SessionKeys(KEY_B, KEY_A, 2, 1, PEER, False), 0.0, backend_b)
    return a, b


def test_both_back_ends_are_available_here():
    assert BACKENDS == ("cffi", "bindings")
    assert session_module.DEFAULT_BACKEND == "cffi"


@pytest.mark.parametrize("backend", BACKENDS)
def test_seal_into_writes_what_seal_returns(backend):
    a1, _ = pair(backend, backend)
    a2, _ = pair(backend, backend)
    packet = bytes(range(200)) * 7
    src = bytearray(b"x" * 10 + packet + b"y" * 10)
    out = bytearray(b"\xee" * 3000)
    end = a1.seal_into(out, 5, src, 10, 10 + len(packet))
    assert end == 5 + OVERHEAD + len(packet)
    assert bytes(out[5:end]) == a2.seal(packet)
    assert out[:5] == b"\xee" * 5 and out[end:] == b"\xee" * (len(out) - end)


def test_back_ends_produce_identical_messages():
    cffi_a, cffi_b = pair("cffi", "cffi")
    nacl_a, nacl_b = pair("bindings", "bindings")
    for payload in (b"x", bytes(1400), bytes(range(256))):
        assert cffi_a.seal(payload) == nacl_a.seal(payload)
    assert cffi_a.keepalive() == nacl_a.keepalive()
    assert cffi_b.seal(b"back") == nacl_b.seal(b"back")


@pytest.mark.parametrize("sealer,opener", [("cffi", "bindings"), ("bindings", "cffi"), ("cffi", "cffi"),
                                           ("bindings", "bindings")])
def test_open_into_opens_in_place(sealer, opener):
    a, b = pair(sealer, opener)
    messages = bytearray()
    payloads = [bytes([n]) * (50 + n) for n in range(5)]
    for payload in payloads:
        messages += a.seal(payload)
    at = 0
    for payload in payloads:
        end = at + OVERHEAD + len(payload)
        assert b.open_into(messages, at, end) == len(payload)
        assert messages[at + 16 : at + 16 + len(payload)] == payload
        at = end
    keepalive = bytearray(a.keepalive())
    assert b.open_into(keepalive, 0, len(keepalive)) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_open_into_refuses_replays_forgeries_and_short_ranges(backend):
    a, b = pair(backend, backend)
    message = a.seal(b"hello world")
    assert b.open_into(bytearray(message), 0, len(message)) == 11
    assert b.open_into(bytearray(message), 0, len(message)) == -1
    fresh = bytearray(a.seal(b"hello world"))
    fresh[20] ^= 1
    assert b.open_into(fresh, 0, len(fresh)) == -1
    assert b.open_into(bytearray(message), 0, OVERHEAD - 1) == -1
    assert b.open_into(bytearray(message), 4, len(message)) == -1


@pytest.mark.parametrize("backend", BACKENDS)
def test_seal_into_refuses_ranges_outside_its_buffers(backend):
    a, _ = pair(backend, backend)
    with pytest.raises(LocalProtocolError):
        a.seal_into(bytearray(OVERHEAD + 9), 0, bytes(10), 0, 10)
    with pytest.raises(LocalProtocolError):
        a.seal_into(bytearray(100), 0, bytes(10), 0, 11)
    with pytest.raises(LocalProtocolError):
        a.seal_into(bytearray(100), 0, bytes(10), 5, 5)
    assert a.send_counter == 0


def test_a_failed_open_leaves_the_window_alone():
    a, b = pair("cffi", "cffi")
    first, second = bytearray(a.seal(b"one")), bytearray(a.seal(b"two"))
    forged = bytearray(second)
    forged[-1] ^= 1
    assert b.open_into(forged, 0, len(forged)) == -1
    assert b.open_into(second, 0, len(second)) == 3
    assert b.open_into(first, 0, len(first)) == 3


def test_key_ring_open_into_rotates_a_confirmed_next_session():
    a, b = pair("cffi", "cffi")
    ring = KeyRing()
    ring.install(b)
    assert ring.next is b and ring.current is None
    message = bytearray(a.seal(b"confirm"))
    assert ring.open_into(message, 0, len(message)) == 7
    assert ring.current is b and ring.next is None
    assert ring.open_into(bytearray(8), 0, 8) == -1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 60), st.integers(0, 260), st.sampled_from(BACKENDS))
def test_open_into_never_raises_on_garbage(data, at, end, backend):
    _, b = pair(backend, backend)
    buf = bytearray(data)
    assert b.open_into(buf, at, min(end, len(buf))) == -1


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=1500), st.integers(0, 40))
def test_seal_into_then_open_into_round_trips(payload, offset):
    a, b = pair("cffi", "bindings")
    out = bytearray(offset + OVERHEAD + len(payload))
    end = a.seal_into(out, offset, payload, 0, len(payload))
    assert b.open_into(out, offset, end) == len(payload)
    assert out[offset + 16 : end - 16] == payload


def test_without_the_cffi_module_sessions_fall_back_to_the_bindings():
    import subprocess
    import sys

    script = (
        "import sys, nacl.bindings; sys.modules['nacl._sodium'] = None\n"
        "from meshvpn.noise import SessionKeys\n"
        "from meshvpn.session import BACKENDS, Session\n"
        "assert BACKENDS == ('bindings',), BACKENDS\n"
        "k = SessionKeys(bytes(32), bytes(range(32)), 1, 2, bytes(32), True)\n"
        "r = SessionKeys(bytes(range(32)), bytes(32), 2, 1, bytes(32), False)\n"
        "a, b = Session(k, 0.0), Session(r, 0.0)\n"
        "assert a.backend == 'bindings' and b.open(a.seal(b'hi')) == b'hi'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
