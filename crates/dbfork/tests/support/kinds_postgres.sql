CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE kinds (
  id serial PRIMARY KEY,
  f real, d double precision, n numeric(30,10), ts timestamptz, t timestamp(6), tm time, dd date,
  b bytea, j jsonb, a int[], u uuid, m mood, txt text,
  g int GENERATED ALWAYS AS (id * 2) STORED
);
INSERT INTO kinds (f, d, n, ts, t, tm, dd, b, j, a, u, m, txt) VALUES
  (0.1, 1.0/3, 12345678901234567890.0123456789, '2024-03-31 01:30:00.123456+02', '2024-02-29 23:59:59.999999', '23:59:59.5', '0001-01-01',
   '\x00ff10'::bytea, '{"k": [1, "é", null]}', '{1,2,NULL}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', E'tab\there ✓ 🎉 \\ '''),
  (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
CREATE SEQUENCE counter START 100;
SELECT nextval('counter'), nextval('counter');
