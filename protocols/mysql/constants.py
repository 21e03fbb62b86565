"""Named numbers of the MySQL / MariaDB client/server protocol.

Capabilities are handled as one 64-bit int: the low 32 bits are MySQL's, the high 32 bits
are MariaDB's extended capabilities, which travel in the last 4 filler bytes of the greeting
and of the handshake response, and only when CLIENT_LONG_PASSWORD (bit 0, which MariaDB
calls CLIENT_MYSQL) is clear: that is how a MariaDB server or client says "I am MariaDB".
"""

from __future__ import annotations

from typing import Final

# --- capability flags -----------------------------------------------------------------------
CLIENT_LONG_PASSWORD: Final = 1
CLIENT_MYSQL: Final = CLIENT_LONG_PASSWORD  # MariaDB's name: clear means "MariaDB, extended caps"
CLIENT_FOUND_ROWS: Final = 1 << 1
CLIENT_LONG_FLAG: Final = 1 << 2
CLIENT_CONNECT_WITH_DB: Final = 1 << 3
CLIENT_NO_SCHEMA: Final = 1 << 4
CLIENT_COMPRESS: Final = 1 << 5
CLIENT_ODBC: Final = 1 << 6
CLIENT_LOCAL_FILES: Final = 1 << 7
CLIENT_IGNORE_SPACE: Final = 1 << 8
CLIENT_PROTOCOL_41: Final = 1 << 9
CLIENT_INTERACTIVE: Final = 1 << 10
CLIENT_SSL: Final = 1 << 11
CLIENT_IGNORE_SIGPIPE: Final = 1 << 12
CLIENT_TRANSACTIONS: Final = 1 << 13
CLIENT_RESERVED: Final = 1 << 14
CLIENT_SECURE_CONNECTION: Final = 1 << 15
CLIENT_MULTI_STATEMENTS: Final = 1 << 16
CLIENT_MULTI_RESULTS: Final = 1 << 17
CLIENT_PS_MULTI_RESULTS: Final = 1 << 18
CLIENT_PLUGIN_AUTH: Final = 1 << 19
CLIENT_CONNECT_ATTRS: Final = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: Final = 1 << 21
CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS: Final = 1 << 22
CLIENT_SESSION_TRACK: Final = 1 << 23
CLIENT_DEPRECATE_EOF: Final = 1 << 24
CLIENT_OPTIONAL_RESULTSET_METADATA: Final = 1 << 25  # MySQL 8: changes the result-set grammar
CLIENT_ZSTD_COMPRESSION_ALGORITHM: Final = 1 << 26  # MySQL 8: adds a level byte to the response
CLIENT_QUERY_ATTRIBUTES: Final = 1 << 27
CLIENT_MULTI_FACTOR_AUTHENTICATION: Final = 1 << 28
CLIENT_CAPABILITY_EXTENSION: Final = 1 << 29
CLIENT_SSL_VERIFY_SERVER_CERT: Final = 1 << 30
CLIENT_REMEMBER_OPTIONS: Final = 1 << 31

# MariaDB extended capabilities (bits 32..63 of the 64-bit capability int).
MARIADB_CLIENT_PROGRESS: Final = 1 << 32
MARIADB_CLIENT_COM_MULTI: Final = 1 << 33
MARIADB_CLIENT_STMT_BULK_OPERATIONS: Final = 1 << 34
MARIADB_CLIENT_EXTENDED_METADATA: Final = 1 << 35
MARIADB_CLIENT_CACHE_METADATA: Final = 1 << 36

# --- server status flags (OK and EOF packets) -----------------------------------------------
SERVER_STATUS_IN_TRANS: Final = 1
SERVER_STATUS_AUTOCOMMIT: Final = 2
SERVER_MORE_RESULTS_EXISTS: Final = 8
SERVER_STATUS_NO_GOOD_INDEX_USED: Final = 16
SERVER_STATUS_NO_INDEX_USED: Final = 32
SERVER_STATUS_CURSOR_EXISTS: Final = 64
SERVER_STATUS_LAST_ROW_SENT: Final = 128
SERVER_STATUS_DB_DROPPED: Final = 256
SERVER_STATUS_NO_BACKSLASH_ESCAPES: Final = 512
SERVER_STATUS_METADATA_CHANGED: Final = 1024
SERVER_QUERY_WAS_SLOW: Final = 2048
SERVER_PS_OUT_PARAMS: Final = 4096
SERVER_STATUS_IN_TRANS_READONLY: Final = 8192
SERVER_SESSION_STATE_CHANGED: Final = 16384

# --- command bytes (first byte of a client packet with sequence id 0) -----------------------
COM_SLEEP: Final = 0
COM_QUIT: Final = 1
COM_INIT_DB: Final = 2
COM_QUERY: Final = 3
COM_FIELD_LIST: Final = 4
COM_CREATE_DB: Final = 5
COM_DROP_DB: Final = 6
COM_REFRESH: Final = 7
COM_SHUTDOWN: Final = 8
COM_STATISTICS: Final = 9
COM_PROCESS_INFO: Final = 10
COM_CONNECT: Final = 11
COM_PROCESS_KILL: Final = 12
COM_DEBUG: Final = 13
COM_PING: Final = 14
COM_TIME: Final = 15
COM_DELAYED_INSERT: Final = 16
COM_CHANGE_USER: Final = 17
COM_BINLOG_DUMP: Final = 18
COM_TABLE_DUMP: Final = 19
COM_CONNECT_OUT: Final = 20
COM_REGISTER_SLAVE: Final = 21
COM_STMT_PREPARE: Final = 22
COM_STMT_EXECUTE: Final = 23
COM_STMT_SEND_LONG_DATA: Final = 24
COM_STMT_CLOSE: Final = 25
COM_STMT_RESET: Final = 26
COM_SET_OPTION: Final = 27
COM_STMT_FETCH: Final = 28
COM_DAEMON: Final = 29
COM_BINLOG_DUMP_GTID: Final = 30
COM_RESET_CONNECTION: Final = 31

# --- first byte of server packets ---------------------------------------------------------
OK: Final = 0x00
EOF: Final = 0xFE
ERR: Final = 0xFF
LOCAL_INFILE: Final = 0xFB
AUTH_MORE_DATA: Final = 0x01
AUTH_SWITCH: Final = 0xFE

# A MariaDB progress report is an ERR packet with this code; it does not end the response.
PROGRESS_REPORT_CODE: Final = 0xFFFF

# --- error codes the proxy produces or reacts to ------------------------------------------
ER_CON_COUNT_ERROR: Final = 1040
ER_HANDSHAKE_ERROR: Final = 1043
ER_DBACCESS_DENIED_ERROR: Final = 1044
ER_ACCESS_DENIED_ERROR: Final = 1045
ER_NO_DB_ERROR: Final = 1046
ER_UNKNOWN_COM_ERROR: Final = 1047
ER_BAD_DB_ERROR: Final = 1049
ER_NO_SUCH_THREAD: Final = 1094
ER_UNKNOWN_ERROR: Final = 1105
ER_NET_PACKET_TOO_LARGE: Final = 1153
ER_NET_PACKETS_OUT_OF_ORDER: Final = 1156
ER_NET_READ_ERROR: Final = 1158
ER_NOT_SUPPORTED_YET: Final = 1235
ER_QUERY_INTERRUPTED: Final = 1317

# --- character set (collation) ids --------------------------------------------------------
LATIN1_SWEDISH_CI: Final = 8
UTF8_GENERAL_CI: Final = 33
UTF8MB4_GENERAL_CI: Final = 45
BINARY: Final = 63
UTF8MB4_0900_AI_CI: Final = 255

# --- authentication plugins ------------------------------------------------------------------
MYSQL_NATIVE_PASSWORD: Final = "mysql_native_password"
CACHING_SHA2_PASSWORD: Final = "caching_sha2_password"
MYSQL_CLEAR_PASSWORD: Final = "mysql_clear_password"
MYSQL_OLD_PASSWORD: Final = "mysql_old_password"  # what a one-byte 0xFE switch request means

# caching_sha2_password's AuthMoreData codes (a single byte after the 0x01 header), and the
# byte the client sends to ask for the server's RSA public key.
CACHING_SHA2_REQUEST_PUBLIC_KEY: Final = 0x02
CACHING_SHA2_FAST_AUTH_SUCCESS: Final = 0x03
CACHING_SHA2_PERFORM_FULL_AUTHENTICATION: Final = 0x04

# --- sizes ------------------------------------------------------------------------------------
MAX_PACKET_PAYLOAD: Final = 0xFFFFFF  # a physical packet this long continues in the next one
NONCE_LENGTH: Final = 20  # the scramble both password plugins use
PROTOCOL_VERSION_10: Final = 10
SQL_STATE_MARKER: Final = b"#"
DEFAULT_SQL_STATE: Final = "HY000"
