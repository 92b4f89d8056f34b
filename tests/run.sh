#!/usr/bin/env bash
# The whole test suite, with its own set-up: the README's test command, and
# what .ci/run calls. On a machine with only Rust and python3 it installs
# (Debian packages, PyPI) and starts what the tests talk to, then runs
# `cargo test --workspace` and prints one closing line for the suite.
#
# What the tests need:
#   - PostgreSQL on 127.0.0.1:5432, user postgres without a password
#     (the backend suite makes a database of its own per test);
#   - MariaDB or MySQL on 127.0.0.1:3306, root without a password;
#   - python3 with requests (the seed's client example), curl;
#   - chromium, chromedriver and a CJK font (the console's browser tests);
#   - Java 17 or later (the PySpark job's test).
# Services already answering are used as they are; nothing is changed on a
# server this script did not install.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tag-engine-target}"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_for() {
  for _ in $(seq 60); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  return 1
}

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
postgres_ready() {
  command -v pg_isready >/dev/null || apt_install postgresql
  pg_up && return 0
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    apt_install postgresql
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    # A server installed here, for the tests: local TCP connections trusted.
    local hba=/etc/postgresql/$version/main/pg_hba.conf
    as_root sed -i 's/^\(host\s\+all\s\+all\s\+127\.0\.0\.1\/32\s\+\)\S\+/\1trust/' "$hba"
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start \
    || as_root service postgresql start
  wait_for pg_up || { echo "PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1; }
}

my_up() { mysqladmin -h 127.0.0.1 -u root status; }
mariadb_ready() {
  my_up >/dev/null 2>&1 && return 0
  local installed=0
  if ! command -v mariadbd >/dev/null && [ ! -x /usr/sbin/mariadbd ]; then
    apt_install mariadb-server
    installed=1
  fi
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd \
    || as_root service mariadb start
  wait_for mysqladmin -u root status || { echo "MariaDB did not start" >&2; exit 1; }
  if [ "$installed" = 1 ]; then
    # Debian's root signs in by socket only: let the tests in over TCP.
    as_root mariadb -u root -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD(''); CREATE DATABASE IF NOT EXISTS test"
  fi
  wait_for my_up || { echo "MariaDB does not answer root on 127.0.0.1:3306" >&2; exit 1; }
}

tools_ready() {
  command -v curl >/dev/null || apt_install curl
  python3 -c "import requests" 2>/dev/null || python3 -m pip install --quiet requests
  if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null \
     || [ ! -d /usr/share/fonts/truetype/wqy ]; then
    apt_install chromium chromium-driver fonts-wqy-zenhei
  fi
  # Spark (tests/spark_job.rs; PySpark itself comes from PyPI into the tests' venv).
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
}

postgres_ready
mariadb_ready
tools_ready

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace 2>&1 | tee "$log" || status=$?
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"
