"""Entry points: the HTTP app, Lambda handlers, the worker and the CLI. Thin: parse, call a service, shape."""
