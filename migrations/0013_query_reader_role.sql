-- The login role the query service reads tenant data as: not a superuser, no BYPASSRLS, no
-- privilege but what `oc_reader` grants (SELECT on the read models, under row-level security).
-- A connection of it that no request bound to a caller sees no tenant rows at all, and raw SQL
-- cannot switch to a stronger role. It has no password here: operators set one
-- (`ALTER ROLE oc_query_reader PASSWORD …`) and give it to the query service
-- (`OC_READER_DATABASE_PASSWORD`). Roles belong to the whole cluster, so creation tolerates an
-- earlier (or concurrent) creator.
DO $$
BEGIN
    CREATE ROLE oc_query_reader LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE INHERIT
        IN ROLE oc_reader;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END $$;
