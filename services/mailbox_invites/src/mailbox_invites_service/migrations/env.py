from mesh_common.db.migrations import run_env
from mailbox_invites_service.models import metadata

run_env(metadata)
