# The two commands in the README. Both set up everything they need (scripts/dev).
.PHONY: demo test unit setup lint

demo:
	bash scripts/dev demo

test:
	bash scripts/dev test

unit:
	bash scripts/dev unit

setup:
	bash scripts/dev setup

lint:
	.venv/bin/ruff check proxy protocols tests && .venv/bin/mypy && .venv/bin/lint-imports
