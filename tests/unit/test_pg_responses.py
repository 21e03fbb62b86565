"""ResponsePlan: answers matched to requests, synthetic answers placed, injected ones hidden."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def match_each(plan: ResponsePlan, *messages: bytes) -> bytes:
    """Match whole messages one by one: the reference for the server stream fed in chunks."""
    return b"".join(plan.match(message) for message in messages)


def test_passed_answers_flow_unchanged() -> None:
    plan = ResponsePlan()
    for request in (Request.PARSE, Request.BIND, Request.EXECUTE, Request.SYNC):
        assert plan.send(request) == b""
    assert match_each(plan, PARSE_COMPLETE, BIND_COMPLETE, ROW, DONE, READY) == (
        PARSE_COMPLETE + BIND_COMPLETE + ROW + DONE + READY
    )
    assert len(plan) == 0


def test_a_synthetic_answer_waits_for_the_answers_before_it() -> None:
    plan = ResponsePlan()
    plan.send(Request.BIND)
    assert plan.send(Request.PARSE, Handling.SYNTHETIC, PARSE_COMPLETE) == b""  # behind the Bind
    plan.send(Request.SYNC)
    assert match_each(plan, BIND_COMPLETE) == BIND_COMPLETE + PARSE_COMPLETE
    assert match_each(plan, READY) == READY


def test_a_synthetic_answer_at_the_head_is_due_at_once() -> None:
    plan = ResponsePlan()
    assert plan.send(Request.CLOSE, Handling.SYNTHETIC, CLOSE_COMPLETE_MESSAGE) == CLOSE_COMPLETE_MESSAGE
    assert len(plan) == 0


def test_answers_to_injected_requests_are_hidden_but_errors_are_not() -> None:
    plan = ResponsePlan()
    plan.send(Request.PARSE, Handling.SWALLOW, statement="rp_1")
    plan.send(Request.BIND)
    plan.send(Request.SYNC)
    assert match_each(plan, PARSE_COMPLETE, BIND_COMPLETE, READY) == BIND_COMPLETE + READY
    plan.send(Request.PARSE, Handling.SWALLOW, statement="rp_2")
    plan.send(Request.BIND)
    plan.send(Request.SYNC)
    # The injected Parse fails: the client sees why, the Bind is skipped up to Sync.
    assert match_each(plan, ERROR, READY) == ERROR + READY
    assert plan.unprepared == ["rp_2"]


def test_after_an_error_everything_up_to_sync_is_skipped_synthetic_answers_too() -> None:
    plan = ResponsePlan()
    plan.send(Request.BIND)
    plan.send(Request.PARSE, Handling.SYNTHETIC, PARSE_COMPLETE)
    plan.send(Request.PARSE, statement="rp_3")
    plan.send(Request.EXECUTE)
    plan.send(Request.SYNC)
    assert match_each(plan, ERROR) == ERROR  # no ParseComplete: the server would have skipped it
    assert plan.unprepared == ["rp_3"]
    assert match_each(plan, READY) == READY and len(plan) == 0


def test_asynchronous_messages_pass_anywhere_and_queries_end_at_ready() -> None:
    plan = ResponsePlan()
    plan.send(Request.QUERY)
    # Errors do not skip here.
    assert match_each(plan, NOTICE, ROW, ERROR, DONE) == NOTICE + ROW + ERROR + DONE
    assert len(plan) == 1
    assert match_each(plan, READY) == READY and len(plan) == 0


def test_an_answer_to_nothing_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation):
        match_each(ResponsePlan(), BIND_COMPLETE)


# --- the server stream: fed as bytes, in any chunks ------------------------------------------

PARAMETER = frame(b"S", b"TimeZone\x00UTC\x00")
IN_TRANSACTION = ReadyForQuery(b"T").encode()
BIG_ROW = frame(b"D", b"\x00\x01\x00\x01\x00\x00" + b"x" * 65536)


def feed_chunked(plan: ResponsePlan, stream: bytes, cuts: list[int]) -> bytes:
    """Feed ``stream`` cut at the given offsets; return everything the client got."""
    out, previous = [], 0
    for cut in [*sorted(cuts), len(stream)]:
        out.append(plan.receive_data(stream[previous:cut]))
        previous = cut
    return b"".join(out)


def test_plain_groups_pass_byte_for_byte_through_any_split() -> None:
    stream = BIND_COMPLETE + BIG_ROW + PARAMETER + DONE + IN_TRANSACTION + ROW + DONE + READY
    for cut in range(len(stream) + 1):
        parameters: dict[str, str] = {}
        plan = ResponsePlan(parameters)
        for request in (Request.BIND, Request.EXECUTE, Request.SYNC, Request.QUERY):
            plan.send(request)
        assert len(plan) == 2  # a plain group is one entry
        assert feed_chunked(plan, stream, [cut]) == stream
        assert plan.at_rest and plan.status == b"I" and parameters == {"TimeZone": "UTC"}


def test_a_plain_group_behind_a_matched_one_is_walked_after_the_switch() -> None:
    # Group 1 needs matching (an injected Parse); group 2 is plain; both arrive in one chunk.
    stream = PARSE_COMPLETE + BIND_COMPLETE + DONE + READY + BIND_COMPLETE + BIG_ROW + DONE + READY
    expected = BIND_COMPLETE + DONE + READY + BIND_COMPLETE + BIG_ROW + DONE + READY
    for cut in range(0, len(stream) + 1, 7):
        plan = ResponsePlan()
        plan.send(Request.PARSE, Handling.SWALLOW, statement="rp_1")
        for request in (Request.BIND, Request.EXECUTE, Request.SYNC) * 2:
            plan.send(request)
        assert feed_chunked(plan, stream, [cut]) == expected
        assert plan.at_rest


def test_answers_before_the_sync_are_matched_one_by_one() -> None:
    plan = ResponsePlan()
    plan.send(Request.BIND)
    plan.send(Request.EXECUTE)  # then the client sends Flush and waits, no Sync yet
    assert plan.receive_data(BIND_COMPLETE + ROW + DONE) == BIND_COMPLETE + ROW + DONE
    assert len(plan) == 0 and plan.at_rest  # all answered so far; the Sync comes next
    plan.send(Request.SYNC)
    assert plan.receive_data(READY) == READY and plan.at_rest


def test_an_error_skips_the_plain_requests_of_its_group() -> None:
    plan = ResponsePlan()
    plan.send(Request.PARSE, statement="rp_9")
    plan.send(Request.BIND)
    plan.send(Request.EXECUTE)
    assert plan.receive_data(ERROR) == ERROR and plan.unprepared == ["rp_9"]
    assert len(plan) == 0  # Bind and Execute were skipped by the server
    plan.send(Request.SYNC)
    assert plan.receive_data(READY) == READY and plan.at_rest


def test_mid_message_only_while_the_client_has_part_of_a_message() -> None:
    plan = ResponsePlan()
    plan.send(Request.QUERY)
    assert plan.receive_data(BIG_ROW[:100]) == BIG_ROW[:100]
    assert plan.mid_message and not plan.at_rest
    plan.receive_data(BIG_ROW[100:] + DONE[:3])
    assert not plan.mid_message  # the half header is held back, not sent
    plan.receive_data(DONE[3:] + READY)
    assert plan.at_rest


def test_the_stream_is_checked_while_walked() -> None:
    plan = ResponsePlan()
    plan.send(Request.QUERY)
    with pytest.raises(ProtocolViolation):
        plan.receive_data(b"D\x00\x00\x00\x02")
    plan = ResponsePlan()
    plan.send(Request.QUERY)
    with pytest.raises(ProtocolViolation):
        plan.receive_data(frame(b"Z", b"X"))
    plan = ResponsePlan()
    with pytest.raises(ProtocolViolation):
        plan.receive_data(READY)  # nothing was asked


def test_moving_a_plan_that_is_owed_answers_is_refused() -> None:
    plan = ResponsePlan()
    plan.send(Request.QUERY)
    with pytest.raises(ProtocolViolation):
        plan.follow({})


MIXED = (
    PARSE_COMPLETE
    + BIND_COMPLETE
    + ROW
    + NOTICE
    + DONE
    + READY  # matched: an injected Parse
    + BIND_COMPLETE
    + BIG_ROW
    + PARAMETER
    + DONE
    + IN_TRANSACTION  # plain
    + ERROR
    + READY  # matched: a named Parse that fails
    + ROW
    + DONE
    + READY  # plain simple query
)


def mixed_plan() -> ResponsePlan:
    plan = ResponsePlan()
    plan.send(Request.PARSE, Handling.SWALLOW, statement="rp_1")
    for request in (Request.BIND, Request.EXECUTE, Request.SYNC) * 2:
        plan.send(request)
    plan.send(Request.PARSE, statement="rp_2")
    plan.send(Request.BIND)
    plan.send(Request.SYNC)
    plan.send(Request.QUERY)
    return plan


@given(st.lists(st.integers(min_value=0, max_value=len(MIXED)), max_size=12))
def test_any_chunking_gives_what_message_by_message_matching_gives(cuts: list[int]) -> None:
    reference = mixed_plan()
    expected = match_each(reference, *split_messages(MIXED))
    plan = mixed_plan()
    assert feed_chunked(plan, MIXED, cuts) == expected
    assert plan.at_rest and plan.unprepared == reference.unprepared == ["rp_2"]


def split_messages(stream: bytes) -> list[bytes]:
    messages, pos = [], 0
    while pos < len(stream):
        end = pos + 1 + int.from_bytes(stream[pos + 1 : pos + 5], "big")
        messages.append(stream[pos:end])
        pos = end
    return messages
