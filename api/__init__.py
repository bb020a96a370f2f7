"""The customer, dispatcher and ops REST API: reads from replicas through PgBouncer."""
