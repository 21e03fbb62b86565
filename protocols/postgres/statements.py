"""Transaction mode: named prepared statements move with their client.

A client's Parse is sent under a server-side name derived from the query and parameter types
(shared by every client that prepares the same statement), and a Bind or Describe naming a
statement the connection lacks is preceded by a Parse whose answer is hidden. Each
connection keeps its server-side statements in LRU order (``ServerState.prepared``), at
most ``PREPARED_PER_CONNECTION``. Close and DEALLOCATE of the client's own statements are
answered here: other clients may share the server-side statement. Part of the pooling core
(``protocols.postgres.pooling``).
"""

from __future__ import annotations

import re

from protocols.postgres.extended import (
    CLOSE_COMPLETE_MESSAGE,
    PARSE_COMPLETE_MESSAGE,
    TARGET_STATEMENT,
    Close,
    Parse,
    StatementNamer,
    with_name,
    with_statement_name,
)
from protocols.postgres.messages import COMMAND_COMPLETE, HEADER, ReadyForQuery, cstring, frame
from protocols.postgres.responses import Handling, Request, ResponsePlan
from protocols.postgres.server_state import PREPARED_PER_CONNECTION, Prepared

DEALLOCATE = re.compile(r'^\s*DEALLOCATE\s+(?:PREPARE\s+)?(ALL|"[^"]+"|[A-Za-z_][\w$]*)\s*;?\s*$', re.I)
DISCARD_ALL = re.compile(r"^\s*DISCARD\s+ALL\s*;?\s*$", re.I)


class ClientStatements:
    """One client's named prepared statements, carried onto whichever connection serves it.

    ``plan`` is the client's ResponsePlan (what the server's answers are matched against);
    an answer given here is appended to ``to_client``, the core's bytes due to the client.
    """

    def __init__(self, plan: ResponsePlan, to_client: list[bytes]) -> None:
        self.plan = plan
        self.to_client = to_client
        self.by_name: dict[str, Parse] = {}  # the client's names → Parse under server-side names

    def parse(self, message: bytes, name: str, prepared: Prepared) -> bytes:
        """What the server gets for the client's Parse of statement ``name`` (not the unnamed
        one): the same renamed, or nothing (the connection has it already)."""
        parse = Parse.decode(message[HEADER.size :])
        server_name = StatementNamer.server_name(parse.query, parse.parameter_types)
        renamed = with_statement_name(parse, server_name)
        self.by_name[name] = renamed
        if server_name in prepared:
            prepared.move_to_end(server_name)
            self.to_client.append(self.plan.send(Request.PARSE, Handling.SYNTHETIC, PARSE_COMPLETE_MESSAGE))
            return b""
        prepared[server_name] = None
        evicted = self._evict(prepared)  # sent first, so queued for its answer first
        self.plan.send(Request.PARSE, statement=server_name)
        return evicted + renamed.encode()

    def renamed(
        self, message: bytes, name: str, start: int, end: int, prepared: Prepared, batch: list[bytes]
    ) -> bytes:
        """``message`` naming the client's statement by its server-side name, prepared here first
        if this connection lacks it. A name we do not know passes: the server says it does not
        exist, as it should."""
        parse = self.by_name.get(name)
        if parse is None:
            return message
        if parse.statement in prepared:
            prepared.move_to_end(parse.statement)
        else:
            prepared[parse.statement] = None
            evicted = self._evict(prepared)  # sent first, so queued for its answer first
            self.plan.send(Request.PARSE, Handling.SWALLOW, statement=parse.statement)
            batch.append(evicted + parse.encode())
        return with_name(message, start, end, parse.statement)

    def close(self, name: str) -> bool:
        """Answer the client's Close of its statement ``name`` here; False if not one of ours."""
        if name not in self.by_name:
            return False
        # Other clients may share the server-side statement: keep it, forget ours.
        del self.by_name[name]
        self.to_client.append(self.plan.send(Request.CLOSE, Handling.SYNTHETIC, CLOSE_COMPLETE_MESSAGE))
        return True

    def deallocate(self, sql: str, prepared: Prepared) -> bool:
        """Answer DEALLOCATE of the client's own statements here; True if handled."""
        if DISCARD_ALL.match(sql):
            self.by_name.clear()
            prepared.clear()  # the server drops them all; then it runs as usual
            return False
        match = DEALLOCATE.match(sql)
        if match is None:
            return False
        target = match.group(1)
        if target.upper() == "ALL":
            self.by_name.clear()
            tag = "DEALLOCATE ALL"
        else:
            name = target[1:-1] if target.startswith('"') else target.lower()
            if name not in self.by_name:
                return False  # an SQL-level PREPARE (that pinned): the server knows it
            del self.by_name[name]
            tag = "DEALLOCATE"
        answer = frame(COMMAND_COMPLETE, cstring(tag)) + ReadyForQuery(self.plan.status).encode()
        self.to_client.append(self.plan.send(Request.QUERY, Handling.SYNTHETIC, answer))
        return True

    def _evict(self, prepared: Prepared) -> bytes:
        """Close the least recently used statements beyond the limit; their answers are hidden."""
        out = []
        while len(prepared) > PREPARED_PER_CONNECTION:
            name, _ = prepared.popitem(last=False)
            self.plan.send(Request.CLOSE, Handling.SWALLOW)
            out.append(Close(TARGET_STATEMENT, name).encode())
        return b"".join(out)
