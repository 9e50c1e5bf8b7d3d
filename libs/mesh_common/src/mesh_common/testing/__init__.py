"""Test support shared by every edumesh test suite: real-server fixtures and helpers.

Servers are real (PostgreSQL, RabbitMQ, MariaDB, ...). A test that needs one either gets it or,
under ``CI=true``, fails loudly; outside CI it is skipped with the reason. Nothing here is
imported by production code.
"""
