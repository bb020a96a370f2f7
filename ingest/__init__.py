"""Driver ping ingestion: validate, produce to Kafka, answer 202 once the broker acked."""
