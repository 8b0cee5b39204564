# Two commands on a fresh machine:  `make run` (the default DAG)  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: run test setup report dry-paper clean

run: setup
	snakemake --cores all

test: setup
	$(PY) -m pytest -q

report: setup  # regenerate the tables and plots only, from MLflow
	snakemake --cores 1 --forcerun report report

dry-paper: setup
	snakemake -n --config preset=paper

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@# Fashion-MNIST from Debian when we can; otherwise the prepare rule downloads it via torchvision
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; fi
	touch $@

clean:
	rm -rf results logs .snakemake
