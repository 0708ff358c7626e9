"""The web UI: pages served by the insitu server itself (same origin, same tokens)."""
