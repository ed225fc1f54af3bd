#!/bin/sh
# Renders deploy/nginx/nginx.conf for a given listen address and upstream
# servers, so one tested file serves every setup:
#   sh deploy/nginx/render.sh deploy/nginx/nginx.conf LISTEN HOST:PORT... > out.conf
# LISTEN is what nginx's `listen` takes (`8080`, `0.0.0.0:8080`,
# `127.0.0.1:8080`). The `server` lines of `upstream scaled_sockets` are
# replaced by one line per HOST:PORT, keeping the first line's parameters
# (max_fails, fail_timeout); everything else is copied unchanged.
# Used by docker-compose.yml (service names) and by the browser test (loopback
# ports). Exits 2 on bad arguments, 1 when the template lacks either part.
set -eu

usage() {
    echo "usage: render.sh TEMPLATE LISTEN HOST:PORT [HOST:PORT...]" >&2
    exit 2
}
[ "$#" -ge 3 ] || usage
template=$1
listen=$2
shift 2
[ -r "$template" ] || { echo "render.sh: cannot read $template" >&2; exit 2; }
case $listen in
    '' | *[!0-9A-Za-z.:\[\]]*) echo "render.sh: bad listen address '$listen'" >&2; exit 2 ;;
esac
for upstream in "$@"; do
    case $upstream in
        *[!0-9A-Za-z._:-]* | :* | *: | *[!0-9]) echo "render.sh: bad upstream '$upstream' (want HOST:PORT)" >&2; exit 2 ;;
        *:*) ;;
        *) echo "render.sh: bad upstream '$upstream' (want HOST:PORT)" >&2; exit 2 ;;
    esac
done

awk -v listen="$listen" -v ups="$*" '
BEGIN { n = split(ups, U, " ") }
/^[ \t]*upstream[ \t]+scaled_sockets[ \t]*\{/ { inup = 1; print; next }
inup && /^[ \t]*server[ \t]/ {
    if (!servers) {
        match($0, /^[ \t]*/); indent = substr($0, 1, RLENGTH)
        params = $0; sub(/^[ \t]*server[ \t]+[^ \t;]+/, "", params)
        for (i = 1; i <= n; i++) print indent "server " U[i] params
        servers = 1
    }
    next
}
inup && /\}/ { inup = 0 }
!listened && /^[ \t]*listen[ \t]+[^;]+;/ {
    match($0, /^[ \t]*/); print substr($0, 1, RLENGTH) "listen " listen ";"
    listened = 1
    next
}
{ print }
END {
    if (!servers) { print "render.sh: no server line in `upstream scaled_sockets { ... }`" > "/dev/stderr"; exit 1 }
    if (!listened) { print "render.sh: no listen line" > "/dev/stderr"; exit 1 }
}' "$template"
