SELECT x FROM (
  SELECT type || ' ' || name || ' ' || coalesce(sql, '') AS x FROM sqlite_master
  UNION ALL SELECT 'rows customer ' || count(*) FROM customer
  UNION ALL SELECT 'rows orders ' || count(*) || ' ' || sum(total) FROM orders
  UNION ALL SELECT 'sequence ' || name || ' ' || seq FROM sqlite_sequence
) ORDER BY x;
