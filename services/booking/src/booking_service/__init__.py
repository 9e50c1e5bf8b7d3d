"""edumesh booking service. LIVE web bookings into the course database: seat and bookability checks
under a lock, no overbooking, durable backlog while the backend is unreachable, confirmation
mail with PDFs.
"""
