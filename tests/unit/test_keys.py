"""Key generation, encoding and private key files."""

import base64
import os
import stat

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from meshvpn import keys
from meshvpn.errors import ConfigError

from fuzzing import mutated


def test_public_key_is_derived_from_private_key() -> None:
    private = keys.generate_private_key()
    assert len(private) == 32
    assert keys.public_key(private) == keys.public_key(private) != private
    assert keys.generate_private_key() != private


def test_known_x25519_vector() -> None:
    # RFC 7748, section 6.1: Alice's key pair.
    private = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    expected = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert keys.public_key(private) == expected


@settings(max_examples=200)
@given(st.binary(min_size=32, max_size=32))
def test_encode_decode_round_trip(key: bytes) -> None:
    text = keys.encode_key(key)
    assert len(text) == 44
    assert keys.decode_key(text) == key


BASE64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
key_texts = st.builds(
    lambda lead, key, tail: lead + base64.b64encode(key).decode() + tail,
    st.sampled_from(["", " ", "\n"]), st.binary(min_size=31, max_size=33), st.sampled_from(["", "\n", " \t"]),
)
"""Base64 of about a key's length, maybe with the white space a key file has around it."""
last_characters = st.builds(lambda key, last: base64.b64encode(key).decode()[:42] + last + "=",
                            st.binary(min_size=32, max_size=32), st.sampled_from(BASE64_ALPHABET[:64]))
"""A key's base64 with any last character: that one carries two spare bits, so 3 in 4 of its spellings are not canonical."""


@settings(max_examples=300)
@given(st.text(max_size=60) | mutated(key_texts, st.text(alphabet=BASE64_ALPHABET + "-_ \n", max_size=2)) | last_characters)
def test_decode_key_accepts_only_base64_of_32_bytes(text: str) -> None:
    try:
        key = keys.decode_key(text)
    except ValueError:
        event("refused")
        return
    event("accepted")
    assert len(key) == 32
    assert base64.b64encode(key).decode() == text.strip()


@pytest.mark.parametrize(
    "text, problem",
    [("not base64!", "not a base64 key"), (base64.b64encode(b"x" * 31).decode(), "this one is 31")],
)
def test_decode_key_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        keys.decode_key(text)


def test_write_private_key_creates_mode_0600_and_reads_back(tmp_path) -> None:
    path = tmp_path / "node.key"
    old_umask = os.umask(0)
    try:
        private = keys.write_private_key(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == keys.encode_key(private) + "\n"
    assert keys.read_private_key(path) == private


def test_write_private_key_writes_a_given_key(tmp_path) -> None:
    private = bytes(range(32))
    assert keys.write_private_key(tmp_path / "k", private) == private
    assert keys.read_private_key(tmp_path / "k") == private


def test_write_private_key_refuses_to_overwrite(tmp_path) -> None:
    path = tmp_path / "node.key"
    path.write_text("precious\n")
    with pytest.raises(ConfigError, match="already exists"):
        keys.write_private_key(path)
    assert path.read_text() == "precious\n"


def test_write_private_key_reports_missing_directory(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot create key file .*No such file"):
        keys.write_private_key(tmp_path / "absent" / "node.key")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_read_private_key_refuses_group_or_other_access(tmp_path, mode: int) -> None:
    path = tmp_path / "node.key"
    keys.write_private_key(path)
    path.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        keys.read_private_key(path)
    assert str(path) in str(caught.value)
    assert f"chmod 600 {path}" in str(caught.value)


def test_read_private_key_reports_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read key file .*absent.key"):
        keys.read_private_key(tmp_path / "absent.key")


def test_read_private_key_rejects_garbage_without_echoing_it(tmp_path) -> None:
    path = tmp_path / "node.key"
    path.write_text("c2VjcmV0LWJ1dC1zaG9ydA==\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="does not hold a base64 32-byte private key") as caught:
        keys.read_private_key(path)
    assert "c2VjcmV0" not in str(caught.value)


def test_decode_key_rejects_non_canonical_spelling() -> None:
    canonical = keys.encode_key(bytes(32))
    assert canonical.endswith("A=")
    with pytest.raises(ValueError, match="canonical"):
        keys.decode_key(canonical[:-2] + "B=")
