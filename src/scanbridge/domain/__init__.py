"""Pure domain: tasks, scans, their state machine, payloads and errors (no I/O)."""
