"""Root conftest: registers the shared edumesh test plugin for every test tier."""

pytest_plugins = ["mesh_common.testing.plugin"]
