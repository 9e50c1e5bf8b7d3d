"""`python -m profile_service`: run the profile service as its own process."""

from mesh_common.runner import serve

from profile_service.app import create_app
from profile_service.settings import Settings

if __name__ == "__main__":
    serve(create_app, Settings())
