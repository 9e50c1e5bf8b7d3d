"""`python -m mailbox_invites_service`: run the mailbox-invites service as its own process."""

from mesh_common.rekey import RekeyTarget
from mesh_common.runner import main

from mailbox_invites_service import models
from mailbox_invites_service.app import create_app
from mailbox_invites_service.service import credentials_context
from mailbox_invites_service.settings import Settings


def rekey_targets(_settings: Settings) -> list[RekeyTarget]:
    """The encrypted columns `rekey` re-encrypts (key rotation, docs/operations.md)."""
    return [
        RekeyTarget(
            "technical_users.credentials",
            models.technical_users,
            "credentials",
            "id",
            lambda row: credentials_context(row.name),
        )
    ]


if __name__ == "__main__":
    raise SystemExit(main(create_app, Settings, rekey_targets=rekey_targets))
