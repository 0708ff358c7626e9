"""Services: each owns a unit of work over the database and commits it."""
