"""KnownLogins: what a pool's server answered logins with, by startup settings, per generation."""

from __future__ import annotations

from proxy.pool.known_logins import KNOWN_LOGINS_LIMIT, KnownLogins

ANSWER = {"application_name": "app", "TimeZone": "UTC", "session_authorization": "app_a"}


def test_an_answer_is_given_for_the_same_settings_in_the_same_generation_only() -> None:
    known = KnownLogins()
    settings = {"application_name": "app", "TimeZone": "utc"}
    assert known.answer(1, settings) is None
    known.remember(1, settings, ANSWER)
    assert known.answer(1, dict(reversed(settings.items()))) == ANSWER  # order does not matter
    assert known.answer(1, {"application_name": "app"}) is None
    assert known.answer(2, settings) is None  # new credentials: maybe another user


def test_a_new_generation_forgets_every_answer_of_the_old_one() -> None:
    known = KnownLogins()
    known.remember(1, {"application_name": "a"}, ANSWER)
    known.remember(2, {"application_name": "b"}, {**ANSWER, "session_authorization": "app_b"})
    assert len(known) == 1 and known.answer(1, {"application_name": "a"}) is None
    assert known.answer(2, {"application_name": "b"}) == {**ANSWER, "session_authorization": "app_b"}


def test_answers_are_copies_and_their_number_is_bounded() -> None:
    known = KnownLogins()
    known.remember(1, {}, ANSWER)
    answer = known.answer(1, {})
    assert answer is not None
    answer["TimeZone"] = "changed by a client"
    assert known.answer(1, {}) == ANSWER
    for index in range(KNOWN_LOGINS_LIMIT * 2):
        known.remember(1, {"application_name": f"client {index}"}, ANSWER)
        assert len(known) <= KNOWN_LOGINS_LIMIT
    assert known.answer(1, {"application_name": f"client {KNOWN_LOGINS_LIMIT * 2 - 1}"}) == ANSWER
