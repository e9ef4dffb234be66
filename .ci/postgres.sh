#!/usr/bin/env bash
# Start a throwaway PostgreSQL server from Debian's packages for the distributed-search tests and print its URL.
# Usage: eval "$(.ci/postgres.sh)"   -> exports AUTOML_FT_TEST_POSTGRES (and PGDATA_AUTOML_FT for the stop hook)
set -euo pipefail
PORT=${AUTOML_FT_PG_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
  else
    echo "echo 'PostgreSQL is not installed and this user cannot apt-get it: distributed tests will skip' >&2"
    exit 0
  fi
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
DATA=$(mktemp -d /tmp/automl-ft-pg.XXXXXX)
RUN_AS=()
if [ "$(id -u)" = 0 ]; then  # PostgreSQL refuses to run as root
  chown postgres:postgres "$DATA"
  RUN_AS=(su postgres -s /bin/sh -c)
else
  RUN_AS=(sh -c)
fi
"${RUN_AS[@]}" "$BIN/initdb -D $DATA -A trust -U postgres" >/dev/null
"${RUN_AS[@]}" "$BIN/pg_ctl -D $DATA -l $DATA/server.log -w -o '-p $PORT -k $DATA -c listen_addresses=127.0.0.1 -c max_connections=200' start" >/dev/null
"$BIN/psql" -q -h 127.0.0.1 -p "$PORT" -U postgres -c "CREATE ROLE automl LOGIN PASSWORD 's3cret-Pw'" >/dev/null
"$BIN/psql" -q -h 127.0.0.1 -p "$PORT" -U postgres -c "CREATE DATABASE automl OWNER automl" >/dev/null
echo "export AUTOML_FT_TEST_POSTGRES='postgresql://automl:s3cret-Pw@127.0.0.1:$PORT/automl'"
echo "export PGDATA_AUTOML_FT='$DATA'"
echo "export PGBIN_AUTOML_FT='$BIN'"
