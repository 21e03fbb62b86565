#!/bin/sh
# rotaproxy's container entry point. With arguments, they are rotaproxy's own
# (`docker run IMAGE check-config -c FILE`). Without, the config comes from:
#   ROTAPROXY_CONFIG       the TOML text itself (ECS task definitions, plain env), written
#                          to $TMPDIR/rotaproxy.toml (default /tmp); else
#   ROTAPROXY_CONFIG_FILE  a mounted file (default /etc/rotaproxy/rotaproxy.toml).
set -eu
if [ "$#" -eq 0 ]; then
    if [ -n "${ROTAPROXY_CONFIG:-}" ]; then
        umask 077
        config="${TMPDIR:-/tmp}/rotaproxy.toml"
        printf '%s\n' "$ROTAPROXY_CONFIG" > "$config"
    else
        config=${ROTAPROXY_CONFIG_FILE:-/etc/rotaproxy/rotaproxy.toml}
    fi
    set -- run -c "$config"
fi
exec rotaproxy "$@"
