"""ResponsePlan: answers matched to requests, the proxy's own answers dropped, outcomes
reported, server-side statement names given back in the client's words."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import ProtocolViolation
from protocols.postgres.extended import BIND_COMPLETE_MESSAGE, CLOSE_COMPLETE_MESSAGE, PARSE_COMPLETE_MESSAGE
from protocols.postgres.messages import ErrorResponse, ReadyForQuery, frame
from protocols.postgres.responses import DONE, FAILED, SKIPPED, Handling, Request, ResponsePlan

PARSE_COMPLETE = PARSE_COMPLETE_MESSAGE
BIND_COMPLETE = BIND_COMPLETE_MESSAGE
CLOSE_COMPLETE = CLOSE_COMPLETE_MESSAGE
ROW = frame(b"D", b"\x00\x01\x00\x00\x00\x011")
SELECTED = frame(b"C", b"SELECT 1\x00")
READY = ReadyForQuery(b"I").encode()
ERROR = ErrorResponse.build("ERROR", "42P01", "no such table").encode()
NOTICE = ErrorResponse({"S": "NOTICE", "M": "hi"}, notice=True).encode()


def tag(text: bytes) -> bytes:
    return frame(b"C", text + b"\x00")


def error(code: str, message: str) -> bytes:
    return ErrorResponse.build("ERROR", code, message).encode()


def match_each(plan: ResponsePlan, *messages: bytes) -> bytes:
    """Match whole messages one by one: the reference for the server stream fed in chunks."""
    return b"".join(plan.match(message) for message in messages)


def test_passed_answers_flow_unchanged() -> None:
    plan = ResponsePlan()
    for request in (Request.PARSE, Request.BIND, Request.EXECUTE, Request.SYNC):
        plan.send(request)
    assert match_each(plan, PARSE_COMPLETE, BIND_COMPLETE, ROW, SELECTED, READY) == (
        PARSE_COMPLETE + BIND_COMPLETE + ROW + SELECTED + READY
    )
    assert len(plan) == 0 and plan.outcomes == []


def test_a_swallowed_answer_is_dropped_but_its_error_reaches_the_client() -> None:
    plan = ResponsePlan()
    plan.send(Request.PARSE, Handling.SWALLOW, token="injected 1")
    plan.send(Request.BIND)
    plan.send(Request.SYNC)
    assert match_each(plan, PARSE_COMPLETE, BIND_COMPLETE, READY) == BIND_COMPLETE + READY
    plan.send(Request.PARSE, Handling.SWALLOW, token="injected 2")
    plan.send(Request.BIND)
    plan.send(Request.SYNC)
    # The injected Parse fails: the client sees why, the Bind is skipped up to Sync.
    assert match_each(plan, ERROR, READY) == ERROR + READY
    assert plan.outcomes == [("injected 1", DONE), ("injected 2", FAILED)]


def test_a_hidden_request_s_whole_answer_is_dropped_errors_too() -> None:
    plan = ResponsePlan()
    plan.send(Request.CLOSE, Handling.HIDE)
    plan.send(Request.QUERY, Handling.HIDE)  # a stand-in the client never asked for
    plan.send(Request.QUERY)
    stand_in = tag(b"PREPARE") + READY
    assert plan.receive_data(CLOSE_COMPLETE + stand_in + SELECTED + READY) == SELECTED + READY
    plan.send(Request.QUERY, Handling.HIDE)
    plan.send(Request.QUERY)
    aborted = ReadyForQuery(b"E").encode()
    assert plan.receive_data(ERROR + aborted + ERROR + aborted) == ERROR + aborted
    assert plan.at_rest and plan.status == b"E"


def test_after_an_error_everything_up_to_sync_is_skipped_and_reported_so() -> None:
    plan = ResponsePlan()
    plan.send(Request.BIND)
    plan.send(Request.PARSE, token="parse")
    plan.send(Request.CLOSE, token="close")
    plan.send(Request.EXECUTE, token="execute", tags=frozenset({b"DISCARD ALL"}))
    plan.send(Request.SYNC)
    assert match_each(plan, ERROR) == ERROR  # the Bind failed: nothing else is answered
    assert plan.outcomes == [("parse", SKIPPED), ("close", SKIPPED), ("execute", SKIPPED)]
    assert match_each(plan, READY) == READY and len(plan) == 0


def test_outcomes_say_done_failed_or_skipped_in_wire_order() -> None:
    plan = ResponsePlan()
    plan.send(Request.PARSE, token="parse")
    plan.send(Request.CLOSE, token="close")
    plan.send(Request.SYNC)
    plan.send(Request.PARSE, token="failing parse")
    plan.send(Request.SYNC)
    stream = PARSE_COMPLETE + CLOSE_COMPLETE + READY + ERROR + READY
    assert plan.receive_data(stream) == stream
    assert plan.outcomes == [("parse", DONE), ("close", DONE), ("failing parse", FAILED)]


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (tag(b"DISCARD ALL") + READY, DONE),
        (tag(b"DEALLOCATE ALL") + READY, DONE),
        (tag(b"SELECT 1") + READY, FAILED),  # ran, but was not what the tags name
        (ERROR + READY, FAILED),
        (tag(b"SELECT 1") + tag(b"DISCARD ALL") + READY, DONE),  # one of several statements
    ],
    ids=["discard-all", "deallocate-all", "other-tag", "error", "multi-statement"],
)
def test_a_query_with_tags_is_done_when_one_of_them_is_in_its_answer(answer: bytes, outcome: int) -> None:
    plan = ResponsePlan()
    plan.send(Request.QUERY, token="clear", tags=frozenset({b"DISCARD ALL", b"DEALLOCATE ALL"}))
    assert plan.receive_data(answer) == answer
    assert plan.outcomes == [("clear", outcome)] and plan.at_rest


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [(tag(b"DISCARD ALL"), DONE), (tag(b"SELECT 1"), FAILED), (ERROR, FAILED)],
    ids=["its-tag", "other-tag", "error"],
)
def test_an_execute_with_tags_is_done_by_its_command_complete(answer: bytes, outcome: int) -> None:
    plan = ResponsePlan()
    plan.send(Request.BIND)
    plan.send(Request.EXECUTE, token="clear", tags=frozenset({b"DISCARD ALL"}))
    plan.send(Request.SYNC)
    assert plan.receive_data(BIND_COMPLETE + answer + READY) == BIND_COMPLETE + answer + READY
    assert plan.outcomes == [("clear", outcome)] and plan.at_rest


def test_requests_sent_after_an_unsynced_error_are_skipped_until_a_sync_is_sent() -> None:
    plan = ResponsePlan()
    plan.send(Request.PARSE, token="parse")
    assert plan.receive_data(ERROR) == ERROR  # the client sent Flush: no Sync queued yet
    assert not plan.at_rest  # the server skips to the next Sync
    plan.send(Request.BIND)
    plan.send(Request.CLOSE, token="close")  # reported at once: the server will skip it
    plan.send(Request.QUERY)  # a Query too: it gets no ReadyForQuery of its own
    assert plan.outcomes == [("parse", FAILED), ("close", SKIPPED)]
    assert len(plan) == 0 and not plan.at_rest
    plan.send(Request.SYNC)
    plan.send(Request.QUERY)  # after the Sync: answered again
    assert plan.receive_data(READY + SELECTED + READY) == READY + SELECTED + READY
    assert plan.at_rest


def test_a_query_behind_unsynced_requests_is_skipped_when_one_of_them_fails() -> None:
    plan = ResponsePlan()
    plan.send(Request.BIND)
    plan.send(Request.EXECUTE)
    plan.send(Request.QUERY)
    plan.send(Request.SYNC)
    assert len(plan) == 4  # the Bind and Execute are matched one by one: the Query hangs on them
    assert plan.receive_data(ERROR + READY) == ERROR + READY
    assert plan.at_rest


def test_asynchronous_messages_pass_anywhere_and_queries_end_at_ready() -> None:
    plan = ResponsePlan()
    plan.send(Request.QUERY)
    # Errors do not skip here.
    assert match_each(plan, NOTICE, ROW, ERROR, SELECTED) == NOTICE + ROW + ERROR + SELECTED
    assert len(plan) == 1
    assert match_each(plan, READY) == READY and len(plan) == 0


def test_an_answer_to_nothing_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation):
        match_each(ResponsePlan(), BIND_COMPLETE)


# --- the completes of accounted requests, at the head -----------------------------------------


def test_completes_at_the_head_are_matched_however_they_are_cut() -> None:
    stream = PARSE_COMPLETE + CLOSE_COMPLETE + PARSE_COMPLETE + BIND_COMPLETE + SELECTED + READY
    expected = PARSE_COMPLETE + BIND_COMPLETE + SELECTED + READY
    for cut in range(len(stream) + 1):
        plan = ResponsePlan()
        plan.send(Request.PARSE, token="parse")
        plan.send(Request.CLOSE, Handling.SWALLOW, token="sweep")
        plan.send(Request.PARSE, Handling.SWALLOW, token="injected")
        plan.send(Request.BIND)
        plan.send(Request.EXECUTE)
        plan.send(Request.SYNC)
        assert plan.receive_data(stream[:cut]) + plan.receive_data(stream[cut:]) == expected, cut
        assert plan.outcomes == [("parse", DONE), ("sweep", DONE), ("injected", DONE)]
        assert plan.at_rest


# --- server-side statement names, in the client's words -------------------------------------

RENAMES = {b"RP_7": b"s1"}
MISSING = error("26000", 'prepared statement "RP_7" does not exist')
MISSING_RENAMED = error("26000", 'prepared statement "s1" does not exist')
PARAMETERS = error("08P01", 'bind message supplies 0 parameters, but prepared statement "RP_7" requires 1')
PARAMETERS_RENAMED = error(
    "08P01", 'bind message supplies 0 parameters, but prepared statement "s1" requires 1'
)


def renaming_plan(matched: bool) -> ResponsePlan:
    """A Bind, Execute, Sync: plain (walked by headers), or behind an injected Parse (matched)."""
    plan = ResponsePlan()
    plan.renames.update(RENAMES)
    if matched:
        plan.send(Request.PARSE, Handling.SWALLOW, token="injected")
    for request in (Request.BIND, Request.EXECUTE, Request.SYNC):
        plan.send(request)
    return plan


@pytest.mark.parametrize("matched", [False, True], ids=["header-walk", "matching"])
@pytest.mark.parametrize(
    ("sent", "renamed"),
    [(MISSING, MISSING_RENAMED), (PARAMETERS, PARAMETERS_RENAMED)],
    ids=["missing", "params"],
)
def test_an_error_naming_a_server_side_statement_names_the_client_s_through_any_split(
    matched: bool, sent: bytes, renamed: bytes
) -> None:
    head = PARSE_COMPLETE if matched else b""
    stream = head + sent + READY
    for cut in range(len(stream) + 1):
        plan = renaming_plan(matched)
        assert plan.receive_data(stream[:cut]) + plan.receive_data(stream[cut:]) == renamed + READY, cut
        assert plan.at_rest


def test_an_error_renamed_between_passed_messages_keeps_them_byte_for_byte() -> None:
    stream = NOTICE + MISSING + NOTICE + READY
    for first in range(len(stream) + 1):
        for second in range(first, len(stream) + 1, 5):
            plan = renaming_plan(matched=False)
            out = plan.receive_data(stream[:first])
            out += plan.receive_data(stream[first:second]) + plan.receive_data(stream[second:])
            assert out == NOTICE + MISSING_RENAMED + NOTICE + READY, (first, second)


def test_names_the_plan_does_not_know_and_hidden_errors_are_left_alone() -> None:
    unknown = error("26000", 'prepared statement "RP_8" does not exist')
    plan = renaming_plan(matched=False)
    assert plan.receive_data(unknown + READY) == unknown + READY
    plan = ResponsePlan()
    plan.renames.update(RENAMES)
    plan.send(Request.QUERY, Handling.HIDE)
    plan.send(Request.QUERY)
    assert plan.receive_data(MISSING + READY + MISSING + READY) == MISSING_RENAMED + READY


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
    stream = BIND_COMPLETE + BIG_ROW + PARAMETER + SELECTED + IN_TRANSACTION + ROW + SELECTED + READY
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
    stream = PARSE_COMPLETE + BIND_COMPLETE + SELECTED + READY + BIND_COMPLETE + BIG_ROW + SELECTED + READY
    expected = BIND_COMPLETE + SELECTED + READY + BIND_COMPLETE + BIG_ROW + SELECTED + READY
    for cut in range(0, len(stream) + 1, 7):
        plan = ResponsePlan()
        plan.send(Request.PARSE, Handling.SWALLOW, token="injected")
        for request in (Request.BIND, Request.EXECUTE, Request.SYNC) * 2:
            plan.send(request)
        assert feed_chunked(plan, stream, [cut]) == expected
        assert plan.at_rest and plan.outcomes == [("injected", DONE)]


def test_answers_before_the_sync_are_matched_one_by_one() -> None:
    plan = ResponsePlan()
    plan.send(Request.BIND)
    plan.send(Request.EXECUTE)  # then the client sends Flush and waits, no Sync yet
    assert plan.receive_data(BIND_COMPLETE + ROW + SELECTED) == BIND_COMPLETE + ROW + SELECTED
    assert len(plan) == 0 and plan.at_rest  # all answered so far; the Sync comes next
    plan.send(Request.SYNC)
    assert plan.receive_data(READY) == READY and plan.at_rest


def test_an_error_skips_the_plain_requests_of_its_group() -> None:
    plan = ResponsePlan()
    plan.send(Request.PARSE, token="parse")
    plan.send(Request.BIND)
    plan.send(Request.EXECUTE)
    assert plan.receive_data(ERROR) == ERROR and plan.outcomes == [("parse", FAILED)]
    assert len(plan) == 0  # Bind and Execute were skipped by the server
    plan.send(Request.SYNC)
    assert plan.receive_data(READY) == READY and plan.at_rest


def test_mid_message_only_while_the_client_has_part_of_a_message() -> None:
    plan = ResponsePlan()
    plan.send(Request.QUERY)
    assert plan.receive_data(BIG_ROW[:100]) == BIG_ROW[:100]
    assert plan.mid_message and not plan.at_rest
    plan.receive_data(BIG_ROW[100:] + SELECTED[:3])
    assert not plan.mid_message  # the half header is held back, not sent
    plan.receive_data(SELECTED[3:] + READY)
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
    + SELECTED
    + READY  # matched: an injected Parse
    + BIND_COMPLETE
    + BIG_ROW
    + PARAMETER
    + SELECTED
    + IN_TRANSACTION  # plain
    + MISSING
    + READY  # matched: a named Parse that fails, naming a server-side statement
    + ROW
    + MISSING
    + SELECTED
    + READY  # plain simple query, an error naming a server-side statement in it
)


def mixed_plan() -> ResponsePlan:
    plan = ResponsePlan()
    plan.renames.update(RENAMES)
    plan.send(Request.PARSE, Handling.SWALLOW, token="injected")
    for request in (Request.BIND, Request.EXECUTE, Request.SYNC) * 2:
        plan.send(request)
    plan.send(Request.PARSE, token="parse")
    plan.send(Request.BIND)
    plan.send(Request.SYNC)
    plan.send(Request.QUERY)
    return plan


@given(st.lists(st.integers(min_value=0, max_value=len(MIXED)), max_size=12))
def test_any_chunking_gives_what_message_by_message_matching_gives(cuts: list[int]) -> None:
    reference = mixed_plan()
    expected = match_each(reference, *split_messages(MIXED))
    assert expected.count(MISSING_RENAMED) == 2
    plan = mixed_plan()
    assert feed_chunked(plan, MIXED, cuts) == expected
    assert plan.at_rest
    assert plan.outcomes == reference.outcomes == [("injected", DONE), ("parse", FAILED)]


def split_messages(stream: bytes) -> list[bytes]:
    messages, pos = [], 0
    while pos < len(stream):
        end = pos + 1 + int.from_bytes(stream[pos + 1 : pos + 5], "big")
        messages.append(stream[pos:end])
        pos = end
    return messages


# --- a plain group's first Parse (send_parse): its outcome read off the walked answer ---------

COPY_IN = frame(b"G", b"\x00\x00\x00")
PLAIN_PARSE_ANSWERS = {
    "done": (PARSE_COMPLETE + BIND_COMPLETE + PARAMETER + ROW + SELECTED + READY, DONE),
    "failed at the Parse": (NOTICE + ERROR + READY, FAILED),
    "failed at the Bind": (PARSE_COMPLETE + PARAMETER + ERROR + READY, DONE),
}


def plain_parse_plan() -> ResponsePlan:
    plan = ResponsePlan()
    plan.send_parse("unnamed")
    for request in (Request.BIND, Request.EXECUTE, Request.SYNC):
        plan.send(request)
    return plan


@pytest.mark.parametrize("case", PLAIN_PARSE_ANSWERS)
def test_a_plain_group_s_first_parse_is_reported_from_its_walked_answer_through_any_split(case: str) -> None:
    stream, outcome = PLAIN_PARSE_ANSWERS[case]
    reference = plain_parse_plan()
    assert match_each(reference, *split_messages(stream)) == stream
    assert reference.outcomes == [("unnamed", outcome)]
    for cut in range(len(stream) + 1):
        plan = plain_parse_plan()
        assert len(plan) == 1  # the group stays plain: one entry
        assert feed_chunked(plan, stream, [cut]) == stream
        assert plan.at_rest and plan.outcomes == [("unnamed", outcome)]


def test_a_parse_that_does_not_open_its_group_is_matched_one_by_one() -> None:
    plan = ResponsePlan()
    plan.send(Request.BIND)
    plan.send_parse("second")  # behind an unsynced Bind: an entry of its own
    plan.send(Request.SYNC)
    assert len(plan) == 3
    assert plan.receive_data(BIND_COMPLETE + ERROR + READY) == BIND_COMPLETE + ERROR + READY
    assert plan.outcomes == [("second", FAILED)]


def test_a_plain_parse_skipped_or_matched_before_its_sync_is_reported_so() -> None:
    plan = ResponsePlan()
    plan.send(Request.BIND)
    plan.send(Request.EXECUTE)
    assert plan.receive_data(ERROR) == ERROR  # (answered before any Sync: matched)
    plan.send_parse("skipped")
    plan.send(Request.SYNC)
    assert plan.receive_data(READY) == READY and plan.outcomes == [("skipped", SKIPPED)]
    plan = ResponsePlan()
    plan.send_parse("early")
    plan.send(Request.BIND)  # then Flush: the server answers before the Sync is sent
    assert plan.receive_data(PARSE_COMPLETE + BIND_COMPLETE) == PARSE_COMPLETE + BIND_COMPLETE
    assert plan.outcomes == [("early", DONE)]
    plan.send(Request.SYNC)
    assert plan.receive_data(READY) == READY and plan.at_rest


def test_a_plain_parse_before_a_query_in_its_group_is_matched_one_by_one() -> None:
    plan = ResponsePlan()
    plan.send_parse("unnamed")
    plan.send(Request.QUERY)  # skipped if the Parse fails: the group is matched
    assert plan.receive_data(ERROR) == ERROR
    assert plan.outcomes == [("unnamed", FAILED)] and not plan.at_rest  # (skipping to a Sync)
    plan.send(Request.SYNC)
    assert plan.receive_data(READY) == READY and plan.at_rest


def test_a_plain_parse_before_a_copy_from_stdin_is_done() -> None:
    plan = plain_parse_plan()  # COPY t FROM STDIN, as libpq sends it in the extended protocol
    answer = PARSE_COMPLETE + BIND_COMPLETE + COPY_IN
    assert plan.receive_data(answer) == answer
    assert plan.outcomes == [("unnamed", DONE)]
    plan.copy_end_sent()
    plan.send(Request.SYNC)
    assert plan.receive_data(tag(b"COPY 0") + READY) == tag(b"COPY 0") + READY
    assert plan.at_rest and plan.outcomes == [("unnamed", DONE)]
