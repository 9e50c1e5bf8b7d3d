from mesh_common.db.migrations import run_env
from booking_service.models import metadata

run_env(metadata)
