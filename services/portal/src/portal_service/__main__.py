"""`python -m portal_service`: run the portal service as its own process."""

from mesh_common.mail.sealing import rekey_target as mail_rekey_target
from mesh_common.rekey import RekeyTarget
from mesh_common.runner import main

from portal_service import models
from portal_service.app import create_app
from portal_service.settings import Settings


def rekey_targets(_settings: Settings) -> list[RekeyTarget]:
    """The encrypted columns ``python -m portal_service rekey`` re-encrypts (key rotation)."""
    return [mail_rekey_target(models.mail)]


if __name__ == "__main__":
    raise SystemExit(main(create_app, Settings, rekey_targets=rekey_targets))
