"""`python -m course_export_service`: run the course-export service as its own process."""

from mesh_common.runner import serve

from course_export_service.app import create_app
from course_export_service.settings import Settings

if __name__ == "__main__":
    serve(create_app, Settings())
