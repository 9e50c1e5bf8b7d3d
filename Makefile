# edumesh — the two commands that matter: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
PYTEST := .venv/bin/pytest

.PHONY: help install run up-local test test-unit test-integration chaos lint fmt typecheck bench lock seed clean token

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

install: ## install everything into .venv (uv bootstrapped if missing; pins from constraints.txt)
	@scripts/bootstrap.sh

run: install ## start the whole mesh on the embedded default (SQLite, in-process bus, mail capture)
	@$(PY) -m mesh_embedded

up-local: install ## production topology without containers: one process per service on PostgreSQL + RabbitMQ
	@scripts/ensure-services.sh
	@$(PY) -m mesh_embedded.topology

test: install ## start the real servers and run every test tier
	@scripts/ensure-packages.sh
	@scripts/ensure-services.sh
	@scripts/test.sh

chaos: install ## fault injection under load (RabbitMQ kill -9, PostgreSQL cuts, SMTP/clamd/Schulconnex down); artifacts/chaos-report.json
	@scripts/ensure-packages.sh
	@scripts/ensure-services.sh
	@mkdir -p artifacts
	@$(PYTEST) -p no:cacheprovider tests/chaos -m chaos

lint: install ## ruff + import boundaries
	@.venv/bin/ruff check libs services tests bench
	@.venv/bin/ruff format --check libs services tests bench

fmt: install ## format the code
	@.venv/bin/ruff format libs services tests bench
	@.venv/bin/ruff check --fix libs services tests bench

typecheck: install ## mypy (strict on libs/mesh_common and libs/mesh_contracts)
	@.venv/bin/mypy libs/mesh_common/src libs/mesh_contracts/src

bench: install ## run every benchmark under bench/ and print one table
	@scripts/ensure-services.sh
	@$(PY) bench/run_all.py

lock: ## re-pin constraints.txt from the pyprojects
	@scripts/lock.sh

seed: install ## (re)seed the embedded course database with demo data: make seed COURSES=5000
	@$(PY) -m coursedb.cli seed --reset --courses $${COURSES:-2000}

token: install ## mint a dev token: make token ROLE=admin SUB=alice (needs MESH_JWT_SECRET)
	@.venv/bin/mesh-token --sub $${SUB:-dev} --role $${ROLE:-admin}

clean: ## remove local state (databases, captured mail) — not the venv
	rm -rf var artifacts
