#!/bin/sh
# PostgreSQL's first start (/docker-entrypoint-initdb.d): one user and database per client, each
# password from its Docker secret. Temporal owns `temporal` and `temporal_visibility`; ledgerflow
# owns `ledgerflow`; neither can read the other's databases.
set -eu

temporal_pw="$(cat /run/secrets/temporal_db_password)"
ledgerflow_pw="$(cat /run/secrets/ledgerflow_db_password)"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v temporal_pw="$temporal_pw" -v ledgerflow_pw="$ledgerflow_pw" <<'SQL'
CREATE ROLE temporal LOGIN PASSWORD :'temporal_pw';
CREATE ROLE ledgerflow LOGIN PASSWORD :'ledgerflow_pw';
CREATE DATABASE temporal OWNER temporal;
CREATE DATABASE temporal_visibility OWNER temporal;
CREATE DATABASE ledgerflow OWNER ledgerflow;
REVOKE ALL ON DATABASE temporal, temporal_visibility, ledgerflow FROM PUBLIC;
GRANT CONNECT ON DATABASE temporal, temporal_visibility TO temporal;
GRANT CONNECT ON DATABASE ledgerflow TO ledgerflow;
SQL
