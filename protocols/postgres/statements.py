"""Transaction mode: a client's named prepared statements, carried onto whichever server
connection serves it. Part of the pooling core (``protocols.postgres.pooling``).

Theory of operation: each statement a client prepares gets a server-side name of its own
(``RP_<n>``, never reused), so the server that answers the client's Parse, Bind, Describe,
Close and DEALLOCATE is asked exactly what the client asked, under another name, and
answers as it would have answered the client: a duplicate name, a failed Parse, a statement
that DDL made stale, an aborted transaction. Names in its errors are given back in the
client's words (``ResponsePlan.renames``).

On a connection that lacks the statement (the client prepared it on another one), a Parse
of it is sent first and its answer hidden (an *injection*). Each connection keeps the
names it holds in LRU order (``ServerState.prepared``), at most ``PREPARED_PER_CONNECTION``.

The books are kept by outcome: what the server did with a Parse, a Close, a DEALLOCATE or a
DEALLOCATE ALL/DISCARD ALL comes back in ``ResponsePlan.outcomes`` and is settled here
(``settle``). A statement the client closed, deallocated or left behind is closed upstream
on every other connection that holds a copy, in the same write as the next work sent on it
(``ServerState.to_close``). A client message whose meaning depends on an outcome not in yet
(a Bind of a statement whose Close or injection is unanswered; anything naming a statement
while a DEALLOCATE ALL or DISCARD ALL is in flight) waits for it (``Hold``): the server is
asked to flush its answers, and the message goes on once they are in.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections import deque
from typing import Final

from protocols.postgres.extended import (
    SERVER_STATEMENT_PREFIX,
    TARGET_STATEMENT,
    Close,
    Parse,
    Query,
    with_name,
)
from protocols.postgres.messages import HEADER
from protocols.postgres.responses import DONE, SKIPPED, Handling, Request, ResponsePlan
from protocols.postgres.server_state import PREPARED_PER_CONNECTION, ServerState
from protocols.postgres.sql import identifier

# One statement's DEALLOCATE, as the server reads it: an unquoted name folds to lower case.
DEALLOCATE: Final = re.compile(
    r'^\s*DEALLOCATE\s+(?:PREPARE\s+)?(?:(ALL)|"((?:[^"]|"")+)"|([A-Za-z_\x80-\U0010ffff][\w$\x80-\U0010ffff]*))\s*;?\s*$',
    re.I,
)
# A text that may drop every prepared statement of the session (then its command tags tell).
_MIGHT_CLEAR: Final = re.compile(r"deallocate|discard", re.I)
CLEAR_TAGS: Final = frozenset({b"DEALLOCATE ALL", b"DISCARD ALL"})
DEALLOCATE_TAGS: Final = frozenset({b"DEALLOCATE"})
CACHED_TEXTS: Final = 4096
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# What a request does to the statements (an ``_Op``'s kind).
DEFINE: Final = 1  # the client's Parse of a named statement
INJECT: Final = 2  # the proxy's Parse of a statement the connection lacks
CLOSE: Final = 3  # the client's Close, or DEALLOCATE, of one of its statements
CLEAR: Final = 4  # DEALLOCATE ALL or DISCARD ALL, if its tag says it ran
SWEEP: Final = 5  # the proxy's Close of a copy nobody needs
UNNAMED: Final = 6  # the client's Parse of the unnamed statement
UNNAMED_END: Final = 7  # a Query or Close that ends the unnamed statement, unless skipped

_HIDDEN_PREPARE: Final = "PREPARE {} AS SELECT"
_CLOSE_UNNAMED: Final = Close(TARGET_STATEMENT, "").encode()


@functools.lru_cache(maxsize=CACHED_TEXTS)
def might_clear(sql: str) -> bool:
    """Whether ``sql`` may deallocate statements (cheap, and remembered for short texts)."""
    return _MIGHT_CLEAR.search(sql) is not None


_server_numbers: Final = itertools.count(1)


def _server_name() -> str:
    """A server-side statement name: one per statement, never reused in this process."""
    return f"{SERVER_STATEMENT_PREFIX}{next(_server_numbers)}"


class Statement:
    """One named statement of a client's: its server-side name, the Parse that makes it,
    and the connections holding a copy."""

    __slots__ = ("copies", "defined", "defining", "name", "parse", "server_name", "unsettled")

    def __init__(self, name: str, server_name: str, parse: bytes) -> None:
        self.name = name
        self.server_name = server_name
        self.parse = parse  # the Parse under ``server_name``, to inject it elsewhere
        self.copies: list[ServerState] = []
        self.defined = False  # a ParseComplete said it exists
        self.defining = 0  # the client's Parses of it not answered yet
        self.unsettled = 0  # Closes and injections of it not answered yet

    def __repr__(self) -> str:
        return f"Statement({self.name!r} as {self.server_name})"


class _Op:
    """A plan entry's token: what one request does to the statements."""

    __slots__ = ("had", "kind", "name", "parse", "statement")

    def __init__(
        self, kind: int, statement: Statement | None, parse: bytes = b"", had: bool = False, name: str = ""
    ) -> None:
        self.kind = kind
        self.statement = statement
        self.parse = parse  # DEFINE: the new definition
        self.had = had  # DEFINE, CLOSE: whether the connection held the statement before
        self.name = name  # SWEEP: the server-side name closed


_UNNAMED_PARSE: Final = _Op(UNNAMED, None)  # (its Parse and generation: ``_unnamed_sent``)
UNNAMED_END_TOKEN: Final = _Op(UNNAMED_END, None)


class ClientStatements:
    """One client's named prepared statements (see the module docstring).

    Each method that forwards a client message appends what the server gets to ``batch``,
    queues its answers in ``plan`` and returns True; False means *hold it* (see above).
    """

    def __init__(self, plan: ResponsePlan) -> None:
        self.plan = plan
        self.by_name: dict[str, Statement] = {}  # the client's names
        self.renames = plan.renames  # server-side name → the client's, for errors
        self.clearing = 0  # DEALLOCATE ALL / DISCARD ALL in flight
        self._dead: list[bytes] = []  # renames to drop once nothing is owed
        # Statements (the unnamed one too) that deallocate: all (None), or one of the client's;
        # and the portals bound to them, whose Execute does it.
        self._executes: dict[str, Statement | None] = {}
        self._portals: dict[str, Statement | None] = {}
        # The unnamed statement lives until the next Parse of it, Close of it or Query; a
        # client may use it after an idle point, on another connection.
        self.unnamed: bytes | None = None  # its Parse, as the server last took it
        self.unnamed_generation = 0  # Queries and Closes of it sent, which end it
        self.unnamed_here = False  # the client made or ended it on this connection
        self._unnamed_sent: deque[tuple[bytes, int]] = deque()  # its Parses not answered yet

    # --- client messages ----------------------------------------------------------------
    def parse(
        self, message: bytes, name: str, start: int, end: int, sql: str, conn: ServerState, batch: list[bytes]
    ) -> bool:
        """The client's Parse (``name`` may be the unnamed statement)."""
        plan = self.plan
        clears = might_clear(sql)
        if self.clearing and (name or clears):
            return False
        if clears:
            match = DEALLOCATE.match(sql)
            if match is None or match.group(1) is not None:
                self._executes[name] = None  # DEALLOCATE ALL, DISCARD ALL, or may be
            elif not name and (target := self.by_name.get(_sql_name(match))) is not None:
                # DEALLOCATE of a statement of the client's: of ours, injected first if lacking.
                if target.unsettled:
                    return False
                if target.server_name not in conn.prepared and target.defined:
                    self._inject(target, conn, batch)
                parse = Parse.decode(message[HEADER.size :])
                sql = f"DEALLOCATE {identifier(target.server_name)}"
                message = Parse(parse.statement, sql, parse.parameter_types).encode()
                self._executes[name] = target
            else:  # (a named DEALLOCATE statement: left as it is)
                self._executes.pop(name, None)
        elif self._executes:
            self._executes.pop(name, None)
        if not name:
            self.unnamed_here = True
            self._unnamed_sent.append((message, self.unnamed_generation))
            plan.send_parse(_UNNAMED_PARSE)
            batch.append(message)
            return True
        statement = self.by_name.get(name)
        if statement is None:
            server_name = _server_name()
            renamed = with_name(message, start, end, server_name)
            statement = Statement(name, server_name, renamed)
            self.by_name[name] = statement
            self.renames[server_name.encode()] = _encoded(name)
            had = False
        else:
            if statement.unsettled or self.clearing:
                return False
            renamed = with_name(message, start, end, statement.server_name)
            had = statement.server_name in conn.prepared
            if not had and statement.defined:  # so the server says the name is taken, as it would
                self._inject(statement, conn, batch)
                had = True
        statement.defining += 1
        self._hold_copy(statement.server_name, conn, batch)
        plan.send(Request.PARSE, token=_Op(DEFINE, statement, renamed, had))
        batch.append(renamed)
        return True

    def named(
        self,
        message: bytes,
        name: str,
        start: int,
        end: int,
        conn: ServerState,
        batch: list[bytes],
        request: Request,
    ) -> bool:
        """A Bind or Describe naming the client's statement ``name`` (not the unnamed one)."""
        statement = self.by_name.get(name)
        if statement is None:
            if name.startswith(SERVER_STATEMENT_PREFIX):  # not one of the proxy's, whoever's it is
                message = with_name(message, start, end, self._alias(name))
        else:
            if statement.unsettled or self.clearing:
                return False
            server_name = statement.server_name
            if server_name in conn.prepared:
                conn.prepared.move_to_end(server_name)
            elif statement.defined:
                self._inject(statement, conn, batch)
            message = with_name(message, start, end, server_name)
        self.plan.send(request)
        batch.append(message)
        return True

    def use_unnamed(self, batch: list[bytes]) -> None:
        """A Bind or Describe of the unnamed statement on a connection the client did not
        make it on: the client's own is made again, or, having none, the connection's is
        closed, so the server says it does not exist (whoever's it was)."""
        self.unnamed_here = True
        unnamed = self.unnamed
        if unnamed is not None:
            self.plan.send(Request.PARSE, Handling.SWALLOW)
            batch.append(unnamed)
        else:
            self.plan.send(Request.CLOSE, Handling.HIDE)
            batch.append(_CLOSE_UNNAMED)

    def unnamed_ended(self) -> None:
        """A Query, FunctionCall or Close of the unnamed statement was sent (or, sent with
        ``UNNAMED_END_TOKEN`` behind requests that may fail, was not skipped): it ends there."""
        self.unnamed_generation += 1
        self.unnamed = None
        self.unnamed_here = True

    def bound(self, name: str, portal: str) -> None:
        """A Bind of statement ``name`` to ``portal`` (asked while ``watches_binds``):
        remember the portals whose Execute deallocates."""
        executes = self._executes
        if name in executes:
            self._portals[portal] = executes[name]
        else:
            self._portals.pop(portal, None)

    def clears_portal(self, portal: str) -> bool:
        """Whether an Execute of ``portal`` deallocates (then ``execute``)."""
        return portal in self._portals

    def execute(self, message: bytes, portal: str, conn: ServerState, batch: list[bytes]) -> bool:
        """An Execute of a portal bound to a DEALLOCATE, DEALLOCATE ALL or DISCARD ALL."""
        if self.clearing:
            return False
        target = self._portals[portal]
        if target is not None:
            if target.unsettled:
                return False
            return self._close(target, message, Request.EXECUTE, DEALLOCATE_TAGS, conn, batch)
        self.clearing += 1
        self.plan.send(Request.EXECUTE, token=_Op(CLEAR, None), tags=CLEAR_TAGS)
        batch.append(message)
        return True

    @property
    def watches_binds(self) -> bool:
        """Whether a Bind may make a portal that deallocates (``bound``)."""
        return bool(self._executes)

    @property
    def watches_executes(self) -> bool:
        """Whether an Execute may deallocate (``clears_portal``)."""
        return bool(self._portals)

    def close(
        self, message: bytes, name: str, start: int, end: int, conn: ServerState, batch: list[bytes]
    ) -> bool:
        """The client's Close of its statement ``name`` (named): the server closes our copy
        (or, lacking it, says CloseComplete all the same)."""
        statement = self.by_name.get(name)
        if statement is None:
            if name.startswith(SERVER_STATEMENT_PREFIX):
                message = with_name(message, start, end, self._alias(name))
            self.plan.send(Request.CLOSE)
            batch.append(message)
            return True
        if statement.unsettled or self.clearing:
            return False
        renamed = with_name(message, start, end, statement.server_name)
        return self._close(statement, renamed, Request.CLOSE, None, conn, batch)

    def query(self, message: bytes, sql: str, conn: ServerState, batch: list[bytes]) -> bool:
        """A Query that ``might_clear``: DEALLOCATE of one statement, or of all, or DISCARD ALL."""
        if self.clearing:
            return False
        plan = self.plan
        match = DEALLOCATE.match(sql)
        if match is not None and match.group(1) is None:
            name = _sql_name(match)
            statement = self.by_name.get(name)
            if statement is None:  # an SQL-level PREPARE's (the client is pinned), or nobody's
                if name.startswith(SERVER_STATEMENT_PREFIX):
                    message = Query(f"DEALLOCATE {identifier(self._alias(name))}").encode()
                plan.send(Request.QUERY)
                batch.append(message)
                return True
            if statement.unsettled:
                return False
            server_name = identifier(statement.server_name)
            if statement.server_name not in conn.prepared:
                # The server must hold something of that name to answer as it would have
                # (DEALLOCATE, or the error of an aborted transaction): a stand-in.
                plan.send(Request.QUERY, Handling.HIDE)
                batch.append(Query(_HIDDEN_PREPARE.format(server_name)).encode())
            rewritten = Query(f"DEALLOCATE {server_name}").encode()
            return self._close(statement, rewritten, Request.QUERY, DEALLOCATE_TAGS, conn, batch)
        self.clearing += 1
        plan.send(Request.QUERY, token=_Op(CLEAR, None), tags=CLEAR_TAGS)
        batch.append(message)
        return True

    def flush_closes(self, conn: ServerState, batch: list[bytes]) -> None:
        """Close upstream, first in ``batch``, the copies ``conn`` holds that nobody needs."""
        for server_name in conn.to_close:
            self.plan.send(Request.CLOSE, Handling.SWALLOW, token=_Op(SWEEP, None, name=server_name))
            batch.append(Close(TARGET_STATEMENT, server_name).encode())
        conn.to_close.clear()

    # --- outcomes -----------------------------------------------------------------------------
    def settle(self, token: object, outcome: int, conn: ServerState) -> None:
        """What the server did with a request of ours (``ResponsePlan.outcomes``)."""
        assert isinstance(token, _Op)
        kind = token.kind
        if kind == UNNAMED:  # (the most common, first)
            parse, generation = self._unnamed_sent.popleft()
            if generation == self.unnamed_generation:  # (else ended since)
                if outcome == DONE:
                    self.unnamed = parse
                elif outcome != SKIPPED:
                    self.unnamed = None  # a failed Parse drops the one before it too
            return
        ok = outcome == DONE
        statement = token.statement
        if kind == UNNAMED_END:
            if outcome != SKIPPED:
                self.unnamed_ended()
            return
        if kind == SWEEP:
            if not ok:
                conn.to_close.append(token.name)
            return
        if kind == CLEAR:
            self.clearing -= 1
            if ok:
                conn.prepared.clear()
                conn.to_close.clear()
                for each in list(self.by_name.values()):
                    each.defined = False
                    self._forget(each, conn)
            return
        assert statement is not None
        server_name = statement.server_name
        if kind == DEFINE:
            statement.defining -= 1
            if ok:
                if statement.defined and statement.parse != token.parse:
                    self._drop_copies(statement, conn)  # redefined: the other copies are stale
                statement.parse = token.parse
                statement.defined = True
                self._add_copy(statement, conn)
            elif not token.had:
                conn.prepared.pop(server_name, None)
        elif kind == INJECT:
            statement.unsettled -= 1
            if ok:
                self._add_copy(statement, conn)
            else:
                conn.prepared.pop(server_name, None)
        else:  # CLOSE
            statement.unsettled -= 1
            if ok:
                statement.defined = False
            elif token.had:
                conn.prepared[server_name] = None
        self._forget(statement, conn)

    def forget_all(self) -> None:
        """The client is gone: its statements are closed wherever a copy is."""
        for statement in list(self.by_name.values()):
            statement.defined = False
            statement.defining = statement.unsettled = 0
            self._forget(statement, None, leaving=True)
        self.renames.clear()
        self._dead.clear()

    def at_rest(self) -> None:
        """Nothing is owed: names of statements gone may leave the error renames."""
        renames = self.renames
        for server_name in self._dead:
            renames.pop(server_name, None)
        self._dead.clear()

    # --- internals ----------------------------------------------------------------------------
    def _close(
        self,
        statement: Statement,
        message: bytes,
        request: Request,
        tags: frozenset[bytes] | None,
        conn: ServerState,
        batch: list[bytes],
    ) -> bool:
        had = conn.prepared.pop(statement.server_name, 0) is None
        statement.unsettled += 1
        self.plan.send(request, token=_Op(CLOSE, statement, had=had), tags=tags)
        batch.append(message)
        return True

    def _inject(self, statement: Statement, conn: ServerState, batch: list[bytes]) -> None:
        statement.unsettled += 1
        self._hold_copy(statement.server_name, conn, batch)
        self.plan.send(Request.PARSE, Handling.SWALLOW, token=_Op(INJECT, statement))
        batch.append(statement.parse)

    def _hold_copy(self, server_name: str, conn: ServerState, batch: list[bytes]) -> None:
        """``conn`` holds ``server_name`` from now on; the least recently used copies beyond
        the limit are closed first (so queued for their answers first)."""
        prepared = conn.prepared
        prepared[server_name] = None
        prepared.move_to_end(server_name)
        while len(prepared) > PREPARED_PER_CONNECTION:
            evicted, _ = prepared.popitem(last=False)
            self.plan.send(Request.CLOSE, Handling.SWALLOW, token=_Op(SWEEP, None, name=evicted))
            batch.append(Close(TARGET_STATEMENT, evicted).encode())

    def _add_copy(self, statement: Statement, conn: ServerState) -> None:
        if conn not in statement.copies:
            statement.copies.append(conn)

    def _drop_copies(self, statement: Statement, conn: ServerState | None, leaving: bool = False) -> None:
        """Every copy but ``conn``'s is closed upstream when its connection next works
        (``conn``'s too when the client is ``leaving``)."""
        server_name = statement.server_name
        for copy in statement.copies:
            if (copy is not conn or leaving) and server_name in copy.prepared:
                del copy.prepared[server_name]
                copy.to_close.append(server_name)
        statement.copies = [conn] if conn is not None and not leaving and conn in statement.copies else []

    def _forget(self, statement: Statement, conn: ServerState | None, leaving: bool = False) -> None:
        """A statement that is neither defined nor on its way is gone: its copies go too."""
        if statement.defined or statement.defining or statement.unsettled:
            return
        self._drop_copies(statement, conn, leaving)
        if self.by_name.get(statement.name) is statement:
            del self.by_name[statement.name]
            self._dead.append(statement.server_name.encode())

    def _alias(self, name: str) -> str:
        """A server-side name nothing has, standing for the client's ``name`` in errors."""
        alias = _server_name()
        self.renames[alias.encode()] = _encoded(name)
        self._dead.append(alias.encode())
        return alias


def _encoded(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _sql_name(match: re.Match[str]) -> str:
    quoted, bare = match.group(2), match.group(3)
    return quoted.replace('""', '"') if quoted is not None else bare.translate(_ASCII_LOWER)
