"""The embedded default: every edumesh service and the gateway in one process.

This is the only package allowed to import service packages: its job is to start them all on
SQLite, one shared in-memory bus and local mail capture, with demo data, for `make run` and for
end-to-end tests. Each service still runs its own uvicorn server on its own port and the gateway
proxies to them over HTTP, exactly as in production; only the bus and databases are embedded.
"""
