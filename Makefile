# Every target runs inside scripts/harness.sh: a private, throw-away dockerd
# with the locally built fixture image (see the script's header).
HARNESS := bash scripts/harness.sh
PYTEST_ARGS ?=
BENCH_ARGS ?=

.DEFAULT_GOAL := test
.PHONY: test demo fixture benchmark

test:
	$(HARNESS) python3 -m pytest $(PYTEST_ARGS)

demo:
	$(HARNESS) bash scripts/demo.sh

fixture:
	$(HARNESS) true

benchmark:
	$(HARNESS) python3 benchmarks/volume_backup.py $(BENCH_ARGS)
