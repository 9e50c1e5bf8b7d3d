"""edumesh course-export service. Exports courses from the centre's course database to the web
platform backend: daily full snapshots, change detection within minutes, manual and scheduled
runs, editable SQL templates.
"""
