.PHONY: setup test test-all run lock clean

setup:
	bash scripts/setup.sh

# The test command (what CI runs): fast and slow-free suite on CPU.
test: setup
	.venv/bin/python -m pytest -q -m "not slow"

test-all: setup
	.venv/bin/python -m pytest -q

# Main job: a CPU-scale pass of the paper experiments and one trace experiment, then its report.
# A first run on a machine measures its ceilings (rpa-bench calibrate) so MBU/MFU have real roofs.
run: setup
	@ls results/calibration/*.json >/dev/null 2>&1 || .venv/bin/rpa-bench calibrate
	.venv/bin/rpa-bench run experiment=main_cpu

lock:
	.venv/bin/python -m pip freeze --exclude-editable | grep -v '^tpu-inference' > requirements.lock

clean:
	rm -rf .venv
