# The two commands a newcomer needs: `make demo` and `make test`. Both install first (idempotent).
.PHONY: install demo test lint

install:
	bash scripts/install.sh --browser

demo: install
	.venv/bin/fleet demo

test: install
	bash scripts/test.sh

lint:
	.venv/bin/ruff check .
