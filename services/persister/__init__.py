"""The persister: the database's only writer. Applies create/append/finalize idempotently, acks durable lengths."""
