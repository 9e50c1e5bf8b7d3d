"""`python -m profile_service`: run the profile service as its own process."""

from mesh_common.connectors.connections import connections_rekey_target
from mesh_common.mail.sealing import rekey_target as mail_rekey_target
from mesh_common.rekey import RekeyTarget
from mesh_common.runner import main

from profile_service import models
from profile_service.app import create_app
from profile_service.settings import Settings


def rekey_targets(_settings: Settings) -> list[RekeyTarget]:
    """The encrypted columns ``python -m profile_service rekey`` re-encrypts (key rotation)."""
    return [connections_rekey_target(models.connectors), mail_rekey_target(models.mail)]


if __name__ == "__main__":
    raise SystemExit(main(create_app, Settings, rekey_targets=rekey_targets))
