"""ResponsePlan: answers matched to requests, synthetic answers placed, injected ones hidden."""

from __future__ import annotations

import pytest

from protocols.errors import ProtocolViolation
from protocols.postgres.extended import CLOSE_COMPLETE_MESSAGE, PARSE_COMPLETE_MESSAGE
from protocols.postgres.messages import ErrorResponse, ReadyForQuery, frame
from protocols.postgres.responses import Handling, Request, ResponsePlan

PARSE_COMPLETE = PARSE_COMPLETE_MESSAGE
BIND_COMPLETE = frame(b"2")
ROW = frame(b"D", b"\x00\x01\x00\x00\x00\x011")
DONE = frame(b"C", b"SELECT 1\x00")
READY = ReadyForQuery(b"I").encode()
ERROR = ErrorResponse.build("ERROR", "42P01", "no such table").encode()
NOTICE = ErrorResponse({"S": "NOTICE", "M": "hi"}, notice=True).encode()


def feed(plan: ResponsePlan, *messages: bytes) -> bytes:
    return b"".join(plan.server_message(message[:1], message) for message in messages)


def test_passed_answers_flow_unchanged() -> None:
    plan = ResponsePlan()
    for request in (Request.PARSE, Request.BIND, Request.EXECUTE, Request.SYNC):
        assert plan.expect(request) == b""
    assert feed(plan, PARSE_COMPLETE, BIND_COMPLETE, ROW, DONE, READY) == (
        PARSE_COMPLETE + BIND_COMPLETE + ROW + DONE + READY
    )
    assert len(plan) == 0


def test_a_synthetic_answer_waits_for_the_answers_before_it() -> None:
    plan = ResponsePlan()
    plan.expect(Request.BIND)
    assert plan.expect(Request.PARSE, Handling.SYNTHETIC, PARSE_COMPLETE) == b""  # behind the Bind
    plan.expect(Request.SYNC)
    assert feed(plan, BIND_COMPLETE) == BIND_COMPLETE + PARSE_COMPLETE
    assert feed(plan, READY) == READY


def test_a_synthetic_answer_at_the_head_is_due_at_once() -> None:
    plan = ResponsePlan()
    assert plan.expect(Request.CLOSE, Handling.SYNTHETIC, CLOSE_COMPLETE_MESSAGE) == CLOSE_COMPLETE_MESSAGE
    assert len(plan) == 0


def test_answers_to_injected_requests_are_hidden_but_errors_are_not() -> None:
    plan = ResponsePlan()
    plan.expect(Request.PARSE, Handling.SWALLOW, statement="rp_1")
    plan.expect(Request.BIND)
    plan.expect(Request.SYNC)
    assert feed(plan, PARSE_COMPLETE, BIND_COMPLETE, READY) == BIND_COMPLETE + READY
    plan.expect(Request.PARSE, Handling.SWALLOW, statement="rp_2")
    plan.expect(Request.BIND)
    plan.expect(Request.SYNC)
    # The injected Parse fails: the client sees why, the Bind is skipped up to Sync.
    assert feed(plan, ERROR, READY) == ERROR + READY
    assert plan.unprepared == ["rp_2"]


def test_after_an_error_everything_up_to_sync_is_skipped_synthetic_answers_too() -> None:
    plan = ResponsePlan()
    plan.expect(Request.BIND)
    plan.expect(Request.PARSE, Handling.SYNTHETIC, PARSE_COMPLETE)
    plan.expect(Request.PARSE, statement="rp_3")
    plan.expect(Request.EXECUTE)
    plan.expect(Request.SYNC)
    assert feed(plan, ERROR) == ERROR  # no ParseComplete: the server would have skipped it
    assert plan.unprepared == ["rp_3"]
    assert feed(plan, READY) == READY and len(plan) == 0


def test_asynchronous_messages_pass_anywhere_and_queries_end_at_ready() -> None:
    plan = ResponsePlan()
    plan.expect(Request.QUERY)
    assert feed(plan, NOTICE, ROW, ERROR, DONE) == NOTICE + ROW + ERROR + DONE  # errors do not skip here
    assert len(plan) == 1
    assert feed(plan, READY) == READY and len(plan) == 0


def test_an_answer_to_nothing_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation):
        feed(ResponsePlan(), BIND_COMPLETE)
