"""The join string: what `meshvpn coord key create` prints and `meshvpn join` reads."""

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshvpn import joinstring
from meshvpn.coord import admin
from meshvpn.config import Address
from meshvpn.coord.authkeys import create_auth_key
from meshvpn.errors import MeshError, RemoteProtocolError
from meshvpn.joinstring import JoinStringError, decode, encode

SECRET = bytes(range(32))
COORD_KEY = bytes(range(100, 132))
TOKEN, _ = create_auth_key("party", SECRET, 1_700_000_000.0)


def test_round_trip_keeps_address_key_and_token():
    text = encode("vps.example.net:7400", COORD_KEY, TOKEN)
    assert text.startswith("mvk-") and text.count("-") == 1 and text == text.lower()
    join = decode(text)
    assert join.coord == Address("vps.example.net", 7400)
    assert join.coord_key == COORD_KEY
    assert join.auth_key == TOKEN


def test_ipv6_address_and_surrounding_blanks():
    join = decode("  " + encode(Address("2001:db8::1", 7400), COORD_KEY, TOKEN) + "\n")
    assert join.coord == Address("2001:db8::1", 7400)


def test_a_bare_token_is_told_apart():
    with pytest.raises(JoinStringError, match="bare pre-auth key"):
        decode(TOKEN)


@pytest.mark.parametrize("position", [4, 20, 60, -1])
def test_a_changed_character_is_caught(position):
    text = encode("192.0.2.10:7400", COORD_KEY, TOKEN)
    position %= len(text)
    changed = text[:position] + ("a" if text[position] != "a" else "b") + text[position + 1:]
    with pytest.raises(JoinStringError):
        decode(changed)


def test_truncated_strings_are_refused():
    text = encode("192.0.2.10:7400", COORD_KEY, TOKEN)
    for cut in (5, 40, len(text) - 3):
        with pytest.raises(JoinStringError):
            decode(text[:cut])


@pytest.mark.parametrize("coord_key, token", [(bytes(32), TOKEN), (COORD_KEY[:31], TOKEN), (COORD_KEY, "mvk-nope")])
def test_encode_refuses_what_could_not_work(coord_key, token):
    with pytest.raises(MeshError):
        encode("192.0.2.10:7400", coord_key, token)


@given(st.text(max_size=300))
def test_any_text_decodes_or_raises_only_the_remote_error(text):
    try:
        decode(text)
    except RemoteProtocolError:
        pass


@given(st.binary(min_size=0, max_size=400))
def test_any_base32_body_decodes_or_raises_only_the_remote_error(body):
    try:
        decode("mvk-" + base64.b32encode(body).decode().rstrip("=").lower())
    except RemoteProtocolError:
        pass


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32).filter(any),
       st.from_regex(r"[a-z]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z][a-z0-9]{0,10}){0,3}", fullmatch=True),
       st.integers(1, 65535))
def test_every_encoded_string_decodes_to_what_went_in(secret, coord_key, host, port):
    token = joinstring.token_for_secret(secret)
    join = decode(encode(f"{host}:{port}", coord_key, token))
    assert (join.coord, join.coord_key, join.secret, join.auth_key) == (Address(host, port), coord_key, secret, token)


def _sealed(body: bytes) -> str:
    """A string with a correct checksum around `body`, to reach the checks behind it."""
    return "mvk-" + base64.b32encode(body + joinstring._check(body)).decode().rstrip("=").lower()


@pytest.mark.parametrize("body, why", [
    (bytes([2]) + SECRET + COORD_KEY + b"192.0.2.10:7400", "version 2"),
    (bytes([1]) + SECRET + bytes(32) + b"192.0.2.10:7400", "all zero"),
    (bytes([1]) + SECRET + COORD_KEY + b"192.0.2.10", "address is bad"),
    (bytes([1]) + SECRET + COORD_KEY + b"\xff:7400", "address is bad"),
    (bytes([1]) + SECRET + COORD_KEY + b"192.0.2.10:0", "port 0"),
])
def test_checked_strings_with_bad_contents_say_what_is_wrong(body, why):
    with pytest.raises(JoinStringError, match=why):
        decode(_sealed(body))


def test_capitals_read_the_same_so_a_qr_code_can_carry_them():
    text = encode("vps.example.net:7400", COORD_KEY, TOKEN)
    assert decode(text.upper()) == decode(text)


def test_the_qr_code_is_drawn_with_block_characters():
    qrcode = pytest.importorskip("qrcode")
    drawn = joinstring.qr_text(encode("vps.example.net:7400", COORD_KEY, TOKEN))
    lines = drawn.splitlines()
    assert set(drawn) <= set("█▀▄ \xa0\n") and len({len(line) for line in lines}) == 1
    code = qrcode.QRCode(border=2)
    code.add_data(encode("vps.example.net:7400", COORD_KEY, TOKEN).upper())
    code.make()
    assert code.data_list[0].mode == qrcode.util.MODE_ALPHA_NUM, "capitals keep the code small"
    assert len(lines) == (code.modules_count + 4 + 1) // 2


@pytest.mark.parametrize("requested, public, listening, coord", [
    ("vps.example.net:7401", Address("203.0.113.10", 7400), ("203.0.113.10", 7400), "vps.example.net:7401"),
    (None, Address("203.0.113.10", 7400), ("0.0.0.0", 7400), "203.0.113.10:7400"),
    (None, None, ("192.0.2.5", 7400), "192.0.2.5:7400"),
])
def test_the_server_writes_the_address_asked_for_or_its_public_or_listening_one(requested, public, listening, coord):
    fields = admin.join_fields(TOKEN, COORD_KEY, public, listening, requested)
    assert fields["join_note"] is None and str(decode(fields["join"]).coord) == coord


@pytest.mark.parametrize("listening, requested, note", [
    (("0.0.0.0", 7400), None, "set public_address in coord.yaml or pass --address"),
    (("::", 7400), None, "wildcard address"),
    (("192.0.2.5", 7400), "nonsense", "expected host:port"),
])
def test_without_a_dialable_address_the_server_says_how_to_get_one(listening, requested, note):
    fields = admin.join_fields(TOKEN, COORD_KEY, None, listening, requested)
    assert fields["join"] is None and note in fields["join_note"]
