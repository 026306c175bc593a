SELECT x FROM (
  SELECT 'table ' || table_name FROM information_schema.tables WHERE table_schema = 'public'
  UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
  UNION ALL SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
  UNION ALL SELECT 'view ' || viewname || ' ' || definition FROM pg_views WHERE schemaname = 'public'
  UNION ALL SELECT 'function ' || proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace
  UNION ALL SELECT 'rows customer ' || count(*) FROM customer
  UNION ALL SELECT 'rows orders ' || count(*) || ' ' || sum(total) FROM orders
  UNION ALL SELECT 'sequence ' || last_value FROM orders_id_seq
) s(x) ORDER BY x;
