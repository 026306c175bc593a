CREATE TABLE customer (id serial PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE orders (
  id bigserial PRIMARY KEY,
  customer_id int NOT NULL REFERENCES customer(id),
  total numeric(10,2),
  created timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer ON orders (customer_id, created);
CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 50;
CREATE VIEW big_customers AS SELECT DISTINCT customer_id FROM big_orders;
CREATE FUNCTION fill_total() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.total := coalesce(NEW.total, 0); RETURN NEW; END $$;
CREATE TRIGGER orders_fill BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION fill_total();
INSERT INTO customer (name) SELECT 'c' || g FROM generate_series(1, 50) g;
INSERT INTO orders (customer_id, total) SELECT 1 + g % 50, g FROM generate_series(1, 500) g;
