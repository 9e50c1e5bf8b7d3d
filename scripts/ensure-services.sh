#!/usr/bin/env bash
# Starts the real servers the test suite uses when they are down (commands from the machine notes).
# Waits until each answers; exits non-zero naming the one that could not be started.
set -uo pipefail

wait_tcp() { # name host port seconds
  local i
  for ((i = 0; i < $4 * 2; i++)); do
    if (exec 3<>"/dev/tcp/$2/$3") 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  echo "ensure-services: $1 did not come up on $2:$3" >&2
  return 1
}
up() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
rc=0

if ! up 127.0.0.1 5432; then
  echo "ensure-services: starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  wait_tcp PostgreSQL 127.0.0.1 5432 60 || rc=1
fi
if ! up 127.0.0.1 5672; then
  echo "ensure-services: starting RabbitMQ" >&2
  rabbitmq-server -detached || true
  wait_tcp RabbitMQ 127.0.0.1 5672 120 || rc=1
  rabbitmq-diagnostics -q check_running >/dev/null 2>&1 || sleep 3
fi
if ! up 127.0.0.1 3306; then
  echo "ensure-services: starting MariaDB" >&2
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  wait_tcp MariaDB 127.0.0.1 3306 60 || rc=1
fi
exit $rc
