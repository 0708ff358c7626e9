#!/usr/bin/env bash
# Make sure a PostgreSQL server answers at 127.0.0.1:5432 for user postgres without a password.
set -euo pipefail
ready() { pg_isready -q -h 127.0.0.1 -p 5432 && psql -h 127.0.0.1 -U postgres -tAc 'select 1' >/dev/null 2>&1; }
ready && exit 0
version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
if [ -z "$version" ]; then
  version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  pg_createcluster "$version" main
fi
conf=/etc/postgresql/$version/main
# Trust local TCP connections: this is a throwaway test server bound to loopback only.
if ! grep -q '^host all all 127.0.0.1/32 trust' "$conf/pg_hba.conf"; then
  sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$conf/pg_hba.conf"
fi
pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster --skip-systemctl-redirect "$version" main reload
for _ in $(seq 1 30); do ready && exit 0; sleep 1; done
echo "PostgreSQL did not come up at 127.0.0.1:5432" >&2
exit 1
