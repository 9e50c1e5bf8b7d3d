"""Tables owned by the course-export service (its own schema / database file). Nothing else writes here."""

from __future__ import annotations

from mesh_common.db import service_metadata

metadata = service_metadata()
