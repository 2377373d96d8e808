-- Sign-ins in progress now live in a sealed cookie (query-service/src/login.rs): an
-- unauthenticated request must not be able to write to the database.
DROP TABLE login_attempts;
