"""`python -m schulconnex_sync_service`: run the schulconnex-sync service as its own process."""

from mesh_common.runner import serve

from schulconnex_sync_service.app import create_app
from schulconnex_sync_service.settings import Settings

if __name__ == "__main__":
    serve(create_app, Settings())
