"""Developer tools: a local platform that serves scans and receives results."""
