from mesh_common.db.migrations import run_env
from course_export_service.models import metadata

run_env(metadata)
