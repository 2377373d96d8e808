#!/bin/sh
# The login role the query service reads tenant data as, with its password from the secret
# file (migrations/0013 makes it too, without a password, and tolerates this one).
set -eu
password=$(cat /run/secrets/reader_db_password)
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
DO \$\$ BEGIN CREATE ROLE oc_reader NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$;
CREATE ROLE oc_query_reader LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE INHERIT
    IN ROLE oc_reader PASSWORD '$password';
SQL
