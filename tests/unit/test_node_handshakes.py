"""Handshake manager: retry schedule with backoff and jitter, giving up, replay refusal."""

import random

import pytest

from meshvpn.constants import REKEY_ATTEMPT_TIME, REKEY_TIMEOUT
from meshvpn.keys import public_key
from meshvpn.node.handshakes import MAX_JITTER, HandshakeManager
from meshvpn.noise import StaticIdentity

A = StaticIdentity.from_private(bytes(range(1, 33)))
B = StaticIdentity.from_private(bytes(range(50, 82)))


def manager(identity, seed=0, wall=1.7e9):
    return HandshakeManager(identity, random.Random(seed).randbytes, wall)


def test_retries_back_off_to_rekey_timeout_then_give_up():
    hs = manager(A)
    attempt = hs.start(B.public, 1, 0.0)
    gaps, now = [], 0.0
    while True:
        now = hs.get_timer()
        retry, abandoned = hs.due(now)
        if abandoned:
            break
        assert retry == [B.public]
        before = attempt.next_retry
        hs.start(B.public, 2, now)
        gaps.append(attempt.next_retry - now)
        assert attempt.next_retry > before
    bases = [2.0, 4.0] + [REKEY_TIMEOUT] * (len(gaps) - 2)
    jitter = [gap - base for gap, base in zip(gaps, bases)]
    assert all(0 <= j <= MAX_JITTER for j in jitter) and len(set(jitter)) > 1
    assert now == pytest.approx(REKEY_ATTEMPT_TIME)
    assert B.public not in hs.attempts and hs.get_timer() is None


def test_each_retry_is_a_new_initiation():
    hs = manager(A)
    first = hs.start(B.public, 1, 0.0).initiator.initiation
    second = hs.start(B.public, 2, 5.0).initiator.initiation
    assert first != second and hs.attempts[B.public].tries == 2


def test_responder_refuses_replays_and_strangers_and_the_initiator_completes():
    a, b = manager(A), manager(B)
    initiation = a.start(B.public, 7, 0.0).initiator.initiation
    assert b.consume_initiation(initiation, lambda key: False) is None, "not a peer"
    pending = b.consume_initiation(initiation, lambda key: key == A.public)
    assert pending is not None and pending.remote_public == A.public
    assert b.consume_initiation(initiation, lambda key: True) is None, "replayed"
    response, responder_keys = pending.respond(9, bytes(range(32)))
    keys = a.consume_response(B.public, response)
    assert keys.send_key == responder_keys.recv_key and keys.remote_index == 9
    assert B.public not in a.attempts
    assert a.consume_response(B.public, response) is None, "attempt is over"


def test_an_older_initiation_is_refused_after_a_newer_one():
    a_early, a_late, b = manager(A, 1, wall=1.7e9), manager(A, 2, wall=1.7e9 + 10), manager(B)
    old = a_early.start(B.public, 1, 0.0).initiator.initiation
    new = a_late.start(B.public, 2, 0.0).initiator.initiation
    assert b.consume_initiation(new, lambda key: True) is not None
    assert b.consume_initiation(old, lambda key: True) is None
