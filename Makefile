.PHONY: demo test bench venv

venv:
	./scripts/bootstrap.sh

demo: venv
	.venv/bin/scrollseg demo --out demo_out

test: venv
	.venv/bin/python -m pytest
