VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run stop test bench clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

SUPERVISORCTL := $(VENV)/bin/supervisorctl -c supervisord.conf

# The whole pipeline under supervisord against the built-in simulator, then
# follow the bus.  Ctrl-C leaves the pipeline running; `make stop` stops it.
run: $(STAMP)
	@mkdir -p var
	@if $(SUPERVISORCTL) pid >/dev/null 2>&1; then \
		echo "supervisord is already running (make stop to stop it)"; \
	else \
		$(VENV)/bin/supervisord -c supervisord.conf && echo "started supervisord: logs in var/, decisions in var/decisions.jsonl"; \
	fi
	@sleep 1; $(SUPERVISORCTL) status || true
	@echo "following the bus (telemetry, decisions, actuations); Ctrl-C to stop watching, make stop to stop the pipeline"
	@$(VENV)/bin/wanctl-tap --config wanctl.sim.yaml --kind telemetry --kind decision --kind actuation

stop:
	@if $(SUPERVISORCTL) pid >/dev/null 2>&1; then \
		$(SUPERVISORCTL) shutdown; \
	else \
		echo "supervisord is not running"; \
	fi

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/bench_replay.py
	$(PY) bench/bench_realtraces.py
	$(PY) bench/idle_noise.py
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_router.py

clean:
	rm -rf $(VENV) var build *.egg-info
