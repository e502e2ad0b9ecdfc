#!/usr/bin/env bash
# tests/postgres.rs starts its own PostgreSQL with Debian's initdb and pg_ctl: install them when
# missing and we can (root, apt-get); otherwise those tests skip with one line each.
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1 \
    || echo "could not install postgresql; the PostgreSQL tests will be skipped"
fi
exit 0
