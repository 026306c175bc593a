CREATE TABLE customer (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE);
CREATE TABLE orders (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  customer_id INTEGER NOT NULL REFERENCES customer (id),
  total NUMERIC
);
CREATE INDEX orders_customer ON orders (customer_id, total);
CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 50;
CREATE TRIGGER orders_fill AFTER INSERT ON orders WHEN NEW.total IS NULL BEGIN UPDATE orders SET total = 0 WHERE id = NEW.id; END;
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 50) INSERT INTO customer (name) SELECT 'c' || n FROM g;
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 500) INSERT INTO orders (customer_id, total) SELECT 1 + n % 50, n FROM g;
PRAGMA journal_mode = WAL;
