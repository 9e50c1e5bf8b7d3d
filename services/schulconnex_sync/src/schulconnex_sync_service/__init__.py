"""edumesh schulconnex-sync service. Synchronises persons, groups and memberships with a
Schulconnex server over OAuth2.
"""
