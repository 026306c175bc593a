SELECT x FROM (
  SELECT CONCAT('table ', table_name, ' ', table_type, ' ', IFNULL(auto_increment, '-')) AS x FROM information_schema.tables WHERE table_schema = DATABASE()
  UNION ALL SELECT CONCAT('index ', table_name, ' ', index_name, ' ', column_name, ' ', seq_in_index, ' ', non_unique) FROM information_schema.statistics WHERE table_schema = DATABASE()
  UNION ALL SELECT CONCAT('fk ', constraint_name, ' ', table_name, ' -> ', referenced_table_name) FROM information_schema.referential_constraints WHERE constraint_schema = DATABASE()
  UNION ALL SELECT CONCAT('trigger ', trigger_name, ' ', action_timing, ' ', event_manipulation) FROM information_schema.triggers WHERE trigger_schema = DATABASE()
  UNION ALL SELECT CONCAT('routine ', routine_name, ' ', routine_type) FROM information_schema.routines WHERE routine_schema = DATABASE()
  UNION ALL SELECT CONCAT('view ', table_name) FROM information_schema.views WHERE table_schema = DATABASE()
  UNION ALL SELECT CONCAT('rows customer ', COUNT(*)) FROM customer
  UNION ALL SELECT CONCAT('rows orders ', COUNT(*), ' ', SUM(total)) FROM orders
  UNION ALL SELECT CONCAT('big customers ', COUNT(*)) FROM big_customers
) s ORDER BY x;
