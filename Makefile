# The two commands of the README: `make book` and `make test`. Both create .venv on first use.
# Coursework (book/instructors_guide.md): `make student` and `make grade SUBMISSIONS=folder`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: book test venv benchmarks clean student grade

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[book,test,grading]"
	touch $(STAMP)

## Build the book: executes every chapter and writes HTML to _build/html (open _build/html/index.html).
book: $(STAMP)
	$(BIN)/jupyter-book build .

## Run the tests: a strict book build (warnings are errors, a failing cell fails it), then the unit
## tests, every notebook under nbval, and the built book opened in headless Chromium.
test: $(STAMP)
	rm -rf _build/html _build/.doctrees
	$(BIN)/jupyter-book build . -W -n --keep-going
	$(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-current-env --sanitize-with tests/nbval_sanitize.cfg

## The student edition: the chapters without solutions and their book, in _build/student (HTML in _build/student/_build/html).
student: $(STAMP)
	$(BIN)/python -m coursework.student_edition --out _build/student --build

## Grade a folder of submitted notebooks, each in a bubblewrap sandbox (Linux; book/instructors_guide.md):
## make grade SUBMISSIONS=folder [GRADES=grades.csv] [TIMEOUT=600] [BATCH=10] [SANDBOX=bubblewrap|none].
## Rerunning it skips the notebooks already in GRADES (same path and SHA-256).
SUBMISSIONS ?= submissions
GRADES ?= grades.csv
TIMEOUT ?= 600
BATCH ?= 10
SANDBOX ?= bubblewrap
grade: $(STAMP)
	$(BIN)/python -m coursework.grade $(SUBMISSIONS) --out $(GRADES) --timeout $(TIMEOUT) --batch $(BATCH) --sandbox $(SANDBOX)

## Time every notebook, the batched lasso and the training loop (on the CPU); writes the tables in benchmarks/.
## Installs the bench extra first (Hugging Face transformers, for the training loop's reference).
benchmarks: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[bench]"
	$(BIN)/python benchmarks/notebook_times.py
	$(BIN)/python benchmarks/lasso_vs_sklearn.py
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf _build
