"""The audit log: a hash-chained SQLite record of everything the service did, with query, export, verify, replay."""
