CREATE TABLE customer (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50) NOT NULL UNIQUE) ENGINE=InnoDB;
CREATE TABLE orders (
  id BIGINT AUTO_INCREMENT PRIMARY KEY,
  customer_id INT NOT NULL,
  total DECIMAL(10,2),
  KEY orders_customer (customer_id, total),
  CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customer (id)
) ENGINE=InnoDB;
CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 50;
CREATE VIEW big_customers AS SELECT DISTINCT customer_id FROM big_orders;
CREATE TRIGGER orders_fill BEFORE INSERT ON orders FOR EACH ROW SET NEW.total = COALESCE(NEW.total, 0);
CREATE FUNCTION double_it(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
INSERT INTO customer (name) WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 50) SELECT CONCAT('c', n) FROM g;
INSERT INTO orders (customer_id, total) WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 500) SELECT 1 + n % 50, n FROM g;
DELETE FROM orders WHERE id > 490;
