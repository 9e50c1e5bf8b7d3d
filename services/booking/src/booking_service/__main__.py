"""`python -m booking_service`: run the booking service as its own process."""

from mesh_common.runner import serve

from booking_service.app import create_app
from booking_service.settings import Settings

if __name__ == "__main__":
    serve(create_app, Settings())
