"""`python -m portal_service`: run the portal service as its own process."""

from mesh_common.runner import serve

from portal_service.app import create_app
from portal_service.settings import Settings

if __name__ == "__main__":
    serve(create_app, Settings())
