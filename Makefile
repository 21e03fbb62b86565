# The two commands in the README. Both set up everything they need (scripts/dev).
.PHONY: demo test unit setup build lint

demo:
	bash scripts/dev demo

test:
	bash scripts/dev test

unit:
	bash scripts/dev unit

setup:
	bash scripts/dev setup

build:
	bash scripts/dev build

lint:
	.venv/bin/ruff check proxy protocols tests && .venv/bin/mypy && .venv/bin/lint-imports
