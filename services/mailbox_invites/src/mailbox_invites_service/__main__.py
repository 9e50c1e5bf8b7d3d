"""`python -m mailbox_invites_service`: run the mailbox-invites service as its own process."""

from mesh_common.runner import serve

from mailbox_invites_service.app import create_app
from mailbox_invites_service.settings import Settings

if __name__ == "__main__":
    serve(create_app, Settings())
