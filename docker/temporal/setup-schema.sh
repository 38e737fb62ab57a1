#!/bin/sh
# Temporal's schema on PostgreSQL, run by temporalio/admin-tools before the server starts:
# creates the tables on the first run and applies the versioned upgrades on every later one, so
# a newer server image upgrades the schema it needs. The databases and the `temporal` user are
# created by docker/postgres/init-users.sh.
set -eu

SQL_PASSWORD="$(cat /run/secrets/temporal_db_password)"
export SQL_PASSWORD
schema=/etc/temporal/schema/postgresql/v12

for db in temporal temporal_visibility; do
  dir=temporal
  [ "$db" = temporal_visibility ] && dir=visibility
  tool="temporal-sql-tool --plugin postgres12 --ep postgresql -p 5432 -u temporal --db $db"
  # setup-schema -v 0.0 only creates the version table when it is missing.
  $tool setup-schema -v 0.0
  $tool update-schema -d "$schema/$dir/versioned"
done
echo "Temporal schema is current"
