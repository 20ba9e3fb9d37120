"""The shop: orders placed over HTTP, each with its OrderPlaced message in the same
transaction (the outbox), and the bills the billing worker writes."""
