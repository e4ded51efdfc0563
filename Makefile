VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run stop check-config test test-floors bench clean

# The config the pipeline runs: the built-in simulator's unless you say
# otherwise (make run WANCTL_CONFIG=wanctl.yaml).  WANCTL_VAR is that config's
# own directory for logs (and, by default, its state, journal and decisions):
# var/<config stem> beside the config.  supervisord.conf reads both.
WANCTL_CONFIG ?= wanctl.sim.yaml
WANCTL_VAR ?= $(dir $(abspath $(WANCTL_CONFIG)))var/$(basename $(notdir $(WANCTL_CONFIG)))
export WANCTL_CONFIG := $(abspath $(WANCTL_CONFIG))
export WANCTL_VAR

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,plot]'
	touch $(STAMP)

SUPERVISORCTL := $(VENV)/bin/supervisorctl -c supervisord.conf

# Validate the config as the collector will (WANs, router password) so that a
# missing password fails here, on the terminal, not in a log.
check-config: $(STAMP)
	@$(PY) -c 'import sys; from bus.sockets import load_stage_config; load_stage_config(sys.argv[1], "collector", needs_router=True)' "$(WANCTL_CONFIG)"

# The whole pipeline under supervisord (against the built-in simulator unless
# WANCTL_CONFIG names a real router), then follow the bus.  Ctrl-C leaves the
# pipeline running; `make stop` stops it.
run: check-config
	@mkdir -p var "$(WANCTL_VAR)"
	@if $(SUPERVISORCTL) pid >/dev/null 2>&1; then \
		echo "supervisord is already running (make stop to stop it)"; \
	else \
		$(VENV)/bin/supervisord -c supervisord.conf && echo "started supervisord with $(WANCTL_CONFIG): logs and decisions in $(WANCTL_VAR)/"; \
	fi
	@sleep 1; $(SUPERVISORCTL) status || true
	@echo "following the bus (telemetry, decisions, actuations); Ctrl-C to stop watching, make stop to stop the pipeline"
	@$(VENV)/bin/wanctl-tap --config "$(WANCTL_CONFIG)" --kind telemetry --kind decision --kind actuation

stop:
	@if $(SUPERVISORCTL) pid >/dev/null 2>&1; then \
		$(SUPERVISORCTL) shutdown; \
	else \
		echo "supervisord is not running"; \
	fi

test: $(STAMP)
	$(PY) -m pytest

# The lowest dependency versions pyproject.toml allows (constraints/floors.txt),
# in a venv of their own, through the fast tests: the floors are tested, not guessed.
FLOORS_VENV := .venv-floors
FLOORS_TESTS := tests/test_floors.py tests/test_config.py tests/test_collector.py tests/test_actuator.py \
	tests/test_replay.py tests/test_tap.py tests/test_bus.py tests/test_health.py tests/test_packaging.py
$(FLOORS_VENV)/.installed: pyproject.toml constraints/floors.txt
	rm -rf $(FLOORS_VENV)
	python3 -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python -m pip install --quiet --prefer-binary -c constraints/floors.txt -e '.[test]'
	touch $@

test-floors: $(FLOORS_VENV)/.installed
	WANCTL_TEST_FLOORS=1 $(FLOORS_VENV)/bin/python -m pytest -q -p no:cacheprovider $(FLOORS_TESTS)

bench: $(STAMP)
	$(PY) bench/bench_replay.py
	$(PY) bench/bench_realtraces.py
	$(PY) bench/idle_noise.py
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_scale.py
	$(PY) bench/bench_router.py

clean:
	rm -rf $(VENV) $(FLOORS_VENV) var build dist *.egg-info
