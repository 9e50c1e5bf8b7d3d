"""edumesh mailbox-invites service. iCalendar invitations to room mailboxes over SMTP, replies read
over IMAP, bounded retries and error recycling.
"""
