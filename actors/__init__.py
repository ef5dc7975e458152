"""The event-driven processes. Thin: they turn log records into calls on mint/ and results into facts."""
