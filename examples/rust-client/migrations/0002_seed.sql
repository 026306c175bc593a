INSERT INTO item (id, name) VALUES (1, 'hammer');
INSERT INTO item (id, name) VALUES (2, 'saw');
