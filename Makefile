# One command each: `make lab` opens the tutorials, `make test` runs every test.
# Both create .venv on first use, so they work on a fresh clone.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp

.PHONY: lab test test-fast envs lint bench clean

# One environment with both sides: the kernel side (`notebook`), the JupyterLab that `make lab`
# runs (`lab`), and the test and lint tools (`dev`). Users split them (README, "Install").
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[notebook,lab,dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

## Open JupyterLab on the tutorials; the offline mock provider is the default.
lab: $(STAMP)
	cd notebooks && PK_NOTEBOOK_PROVIDER=$${PK_NOTEBOOK_PROVIDER:-mock} ../$(BIN)/jupyter lab \
		$$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

## The whole suite: unit, real kernels, real JupyterLab in headless Chromium, Redis, nbval.
test: $(STAMP) envs
	$(BIN)/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with nbval-sanitize.cfg -p no:cacheprovider $(PYTEST_ARGS)

## Everything except browser, kernel and notebook tests: quick feedback while coding.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not browser and not kernel" -p no:cacheprovider $(PYTEST_ARGS)

## The extra environments of the setups users have (split JupyterLab servers, Colab's kernel;
## tests/envs.py), built once into .venv-envs/ and reused while their pins are unchanged.
envs: $(STAMP)
	$(BIN)/python -m tests.envs

lint: $(STAMP)
	$(BIN)/ruff check pk_notebook tests benchmarks
	$(BIN)/mypy pk_notebook

## Benchmarks against the peers (raw httpx, httpx-sse, openai SDK); not part of CI.
bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .venv-envs .pytest_cache test-artifacts
