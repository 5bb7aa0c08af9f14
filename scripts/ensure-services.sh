#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis answer on 127.0.0.1, starting them if they do not.
# Fails loudly (exit 1) when it cannot: the tests never skip for a missing service.
set -uo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }

wait_for() {
  local what=$1 check=$2
  for _ in $(seq 1 60); do
    if $check; then return 0; fi
    sleep 0.5
  done
  echo "FATAL: $what does not answer on 127.0.0.1 after starting it" >&2
  return 1
}

if ! pg_up; then
  echo "PostgreSQL is not answering; starting it"
  if command -v pg_ctlcluster >/dev/null 2>&1 && ls /etc/postgresql >/dev/null 2>&1; then
    for version in $(ls /etc/postgresql); do
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
  else
    echo "FATAL: PostgreSQL is not installed (need pg_ctlcluster and /etc/postgresql)" >&2
    exit 1
  fi
  wait_for PostgreSQL pg_up || exit 1
fi

if ! redis_up; then
  echo "Redis is not answering; starting it"
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "FATAL: redis-server is not installed" >&2
    exit 1
  fi
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  wait_for Redis redis_up || exit 1
fi

echo "PostgreSQL and Redis answer on 127.0.0.1"
