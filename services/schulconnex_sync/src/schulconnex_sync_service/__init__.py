"""edumesh schulconnex-sync service. Synchronises persons, groups and memberships with a
Schulconnex server (source-system API v1.7) over OAuth2, as the practice guide's eleven steps:
select the courses, match persons (six cases) and groups and memberships (four cases each) by
key and by attributes, update with PUT and the revision, create with POST, ask a person where the
guide says so (confirmations), import what was confirmed, and report counts per case. Every
route needs the permission (JWT scope) ``schulconnex.sync``. See docs/schulconnex-sync.md.
"""
