"""In-process adapters: in-memory stores (tests, offline CLI) and the subprocess job launcher."""
