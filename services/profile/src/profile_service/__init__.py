"""edumesh profile service. Participant profile: address, bank data stored encrypted, order
history, read by the web platform during registration.
"""
