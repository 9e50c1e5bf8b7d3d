"""edumesh profile service: the participant's own data, kept only in the centre's course database.

Participants read and change their address and contact data (optimistic concurrency with ETag /
If-Match), keep bank accounts for SEPA direct debit (IBAN validated, stored only encrypted, shown
masked) and see their order history. The website's backend reads the same data during
registration over RPC or REST, only with the participant's token or a short-lived signed
delegation for that participant. Staff have read-only, audited access.
"""
