"""coursedb: the adult-education centre's local course database (the system of record).

It stands in for a product such as itm:MANAGER / KuferSQL: edumesh services read and write it, but
do not own it. Modules:

- ``coursedb.schema``  tables (SQLAlchemy Core), status and mode enumerations
- ``coursedb.engine``  ``create_engine(url)``, ``create_schema``, ``drop_schema``
- ``coursedb.access``  ``update_row`` / ``touch``: updates that keep change detection working
- ``coursedb.seed``    deterministic German demo data (``coursedb seed``)
- ``coursedb.iban``    IBAN check digits
- ``coursedb.cli``     the ``coursedb`` command

Importing the package does nothing else: no settings, no connections.
"""
