from mesh_common.db.migrations import run_env
from schulconnex_sync_service.models import metadata

run_env(metadata)
