-- A row the relay could not publish (Kafka refuses it for good, or it makes the relay
-- raise) is dead-lettered in place: marked sent so the rows after it go on, with the
-- reason here, for an operator (`SELECT * FROM outbox WHERE error IS NOT NULL`). A
-- nullable column without a default: no table rewrite, a brief lock only.
ALTER TABLE outbox ADD COLUMN error text;
